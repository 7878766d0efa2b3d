"""The pure parts of the webhook certificate rotation and of OpenShift's uid range."""

import datetime

from cryptography import x509
from lifeboat.operator import openshift, rotation, webhook

NAMES = ["svc", "svc.ns", "svc.ns.svc", "svc.ns.svc.cluster.local"]


def test_renewal_after_two_thirds_of_the_life_for_other_names_or_a_shorter_policy() -> None:
    policy = rotation.Policy(datetime.timedelta(seconds=90))
    now = datetime.datetime.now(datetime.UTC)
    cert = webhook.generate_certificate(NAMES, validity=policy.validity).cert
    assert not rotation.needs_renewal(cert, NAMES, policy, now)
    assert not rotation.needs_renewal(cert, NAMES, policy, now + datetime.timedelta(seconds=55))
    assert rotation.needs_renewal(cert, NAMES, policy, now + datetime.timedelta(seconds=65))
    assert rotation.needs_renewal(cert, [*NAMES, "other.ns.svc"], policy, now)
    # A ten-year certificate under a one-minute policy is re-issued at once.
    long_lived = webhook.generate_certificate(NAMES).cert
    assert rotation.needs_renewal(long_lived, NAMES, policy, now)
    assert not rotation.needs_renewal(long_lived, NAMES, rotation.Policy(), now)
    # Rounds are paced by this: a short-lived certificate is not left to expire between two rounds.
    due = rotation.renewal_due(cert, NAMES, policy, now)
    assert now + datetime.timedelta(seconds=55) < due < now + datetime.timedelta(seconds=65)


def test_bundles_drop_expired_and_duplicate_cas_and_keep_the_order() -> None:
    now = datetime.datetime.now(datetime.UTC)
    old = webhook.generate_certificate(NAMES, validity=datetime.timedelta(seconds=30)).ca
    new = webhook.generate_certificate(NAMES).ca
    bundle = rotation.split_pem(old + new + b"garbage\n" + old)
    assert bundle == [old, new, old]
    assert rotation.unexpired(bundle, now) == [old, new]
    assert rotation.unexpired(bundle, now + datetime.timedelta(minutes=1)) == [new]


def test_generated_cas_are_told_apart_by_name_and_key_identifier() -> None:
    first, second = (webhook.generate_certificate(NAMES) for _ in range(2))
    cas = [x509.load_pem_x509_certificate(b.ca) for b in (first, second)]
    assert cas[0].subject != cas[1].subject
    leaf = x509.load_pem_x509_certificate(second.cert)
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == cas[1].extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def test_rounds_are_paced_by_the_validity() -> None:
    assert rotation.Policy().interval == 60
    assert rotation.Policy().propagation == datetime.timedelta(seconds=10)
    assert rotation.Policy(datetime.timedelta(seconds=60)).interval == 3


def test_openshift_first_uid_of_the_namespace_range() -> None:
    def namespace(value: str | None) -> dict[str, object]:
        return {"metadata": {"annotations": {openshift.UID_RANGE_ANNOTATION: value} if value else {}}}

    assert openshift.first_uid(namespace("1000650000/10000")) == 1000650000
    assert openshift.first_uid(namespace("1000650000-1000659999")) == 1000650000
    assert openshift.first_uid(namespace(None)) is None
    assert openshift.first_uid(namespace("not a range")) is None
    assert openshift.first_uid(None) is None
