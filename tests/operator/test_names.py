"""``names.bounded``: derived names and label values within Kubernetes' limits."""

import re

from lifeboat.operator import names, restores

LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def test_short_names_are_kept() -> None:
    assert names.bounded("nightly") == "nightly"
    assert names.bounded("x" * 63) == "x" * 63
    assert restores.job_name("nightly") == "nightly-restore"


def test_long_names_are_cut_with_a_hash_and_stay_valid_and_distinct() -> None:
    base = "restore-the-production-database-of-the-billing-service-to-yesterday"
    first, second = names.bounded(base + "-a"), names.bounded(base + "-b")

    assert len(first) == len(second) == 63
    assert first != second
    assert LABEL_VALUE.match(first) and LABEL_VALUE.match(second)


def test_a_cut_never_ends_in_punctuation() -> None:
    value = names.bounded("a" * 51 + "-." + "b" * 30)

    assert LABEL_VALUE.match(value), value
    assert len(value) <= 63


def test_long_restore_names_give_valid_distinct_job_names() -> None:
    base = "r" * 60
    first, second = restores.job_name(base + "1"), restores.job_name(base + "2")

    assert first != second
    assert len(first) <= 63 and first.endswith("-restore")
