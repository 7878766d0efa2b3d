"""spec.verify.schedule: cron parsing, the next run, the gap the alert allows, and the one-line refusals."""

import datetime
import pathlib
import re

import pytest
import yaml
from lifeboat.operator import cron, verify

UTC = datetime.UTC


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("schedule", "after", "expected"), [
    ("* * * * *", "2026-03-01 10:00:30", "2026-03-01 10:01:00"),
    ("0 3 * * *", "2026-03-01 03:00:00", "2026-03-02 03:00:00"),
    ("0 3 * * *", "2026-03-01 02:59:59", "2026-03-01 03:00:00"),
    ("*/15 * * * *", "2026-03-01 10:16:00", "2026-03-01 10:30:00"),
    ("30 9 * * 1-5", "2026-03-06 10:00:00", "2026-03-09 09:30:00"),  # Friday after 9:30 → Monday
    ("0 0 * * 7", "2026-03-01 00:00:00", "2026-03-08 00:00:00"),  # 7 is Sunday, as 0
    ("0 0 29 2 *", "2026-03-01 00:00:00", "2028-02-29 00:00:00"),  # leap day
    ("0 0 31 * *", "2026-04-01 00:00:00", "2026-05-31 00:00:00"),  # April has no 31st
    ("0 0 13 * 5", "2026-03-01 00:00:00", "2026-03-06 00:00:00"),  # day of month OR Friday, as cron
    ("0 12 1,15 1-12/3 *", "2026-01-15 12:00:00", "2026-04-01 12:00:00"),
    ("@hourly", "2026-03-01 10:00:00", "2026-03-01 11:00:00"),
    ("@daily", "2026-12-31 23:59:00", "2027-01-01 00:00:00"),
    ("@weekly", "2026-03-01 00:00:00", "2026-03-08 00:00:00"),
    ("@monthly", "2026-12-15 00:00:00", "2027-01-01 00:00:00"),
    ("@yearly", "2026-03-01 00:00:00", "2027-01-01 00:00:00"),
])
def test_next_run(schedule: str, after: str, expected: str) -> None:
    assert cron.parse(schedule).next_after(at(after)) == at(expected)


def test_a_step_restricts_the_day_of_week_field_as_in_cronjobs() -> None:
    # "*/2" is not a bare *: day 2 (a Monday) or an even weekday both run.
    schedule = cron.parse("0 0 2 * */2")
    assert schedule.next_after(at("2026-03-01 00:00:00")) == at("2026-03-02 00:00:00")
    assert schedule.next_after(at("2026-03-02 00:00:00")) == at("2026-03-03 00:00:00")  # Tuesday (2)


@pytest.mark.parametrize(("schedule", "error"), [
    ("* * * *", "expected 5 fields"),
    ("60 * * * *", "minute 60 is out of range 0-59"),
    ("0 24 * * *", "hour 24 is out of range 0-23"),
    ("0 0 0 * *", "day of month 0 is out of range 1-31"),
    ("0 0 * 13 *", "month 13 is out of range 1-12"),
    ("0 0 * * 8", "day of week 8 is out of range 0-7"),
    ("5-1 * * * *", "minute range '5-1' runs backwards"),
    ("*/0 * * * *", "minute 0 is out of range 1-60"),
    ("a * * * *", "minute 'a' is not a number"),
    ("0 0 30 2 *", "day of month 30 never comes"),
    ("@often", "expected 5 fields"),
])
def test_invalid_schedules_name_the_field(schedule: str, error: str) -> None:
    with pytest.raises(cron.CronError, match=error):
        cron.parse(schedule)


def test_the_webhook_refuses_a_bad_schedule_in_one_line_naming_the_field() -> None:
    (problem,) = verify.problems({"verify": {"schedule": "0 25 * * *"}})
    assert problem == "spec.verify.schedule '0 25 * * *': hour 25 is out of range 0-23"
    assert verify.problems({"verify": {"schedule": "0 3 * * *"}}) == []
    assert verify.problems({}) == []


@pytest.mark.parametrize(("schedule", "seconds"), [
    ("* * * * *", 60), ("0 3 * * *", 86400), ("0 9 * * 1-5", 3 * 86400), ("*/20 * * * *", 1200),
])
def test_the_interval_the_alert_allows_twice_is_the_longest_gap(schedule: str, seconds: float) -> None:
    assert verify.interval_seconds(schedule) == seconds


def _crd_schedule_rule() -> "re.Pattern[str]":
    """The regular expression of the CRD's CEL rule on spec.verify.schedule (RE2; Python reads it alike)."""
    crd = yaml.safe_load((pathlib.Path(__file__).resolve().parents[2] / "crds" / "sqlitereplicas.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    (rule,) = schema["properties"]["spec"]["properties"]["verify"]["properties"]["schedule"]["x-kubernetes-validations"]
    return re.compile(rule["rule"].removeprefix("self.matches('").removesuffix("')"))


@pytest.mark.parametrize("schedule", [
    "0 3 * * *", "*/5 * * * *", "1-5,7 0-23/2 1 1-12 0-7", "59 23 31 12 7", "@daily", "@Hourly", " 0 0 1 1 * ",
    "60 * * * *", "0 24 * * *", "0 0 0 * *", "0 0 32 * *", "0 0 * 13 *", "0 0 * * 8", "every day", "* * * *",
    "@fortnightly",
])
def test_the_crd_rule_refuses_what_the_operator_cannot_schedule(schedule: str) -> None:
    """The API server refuses a schedule by the CRD rule exactly when the operator's parser would
    (ranges that run backwards, such as 30-10, are left to the parser's condition)."""
    try:
        cron.parse(schedule)
        parsed = True
    except cron.CronError:
        parsed = False
    assert bool(_crd_schedule_rule().match(schedule)) == parsed
