"""The credentials Secret check of the status rounds: a good Secret is read again only after a while,
one that is not good on every round."""

import kmock
import pytest
from kube_helpers import NAMESPACE, create, make_replica
from lifeboat.operator import credentials, kube
from workloads import delete

SECRETS = f"/api/v1/namespaces/{NAMESPACE}/secrets"


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


SPEC = make_replica()["spec"]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def checks(kubeconfig: None, clock: Clock) -> credentials.SecretChecks:
    """The checks against kmock, on the test's clock."""
    return credentials.SecretChecks(kube.Kube(kube.load_api_client()), clock)


async def create_secret(k8s: kmock.KubernetesEmulator) -> None:
    """The Secret the replica names, with the keys it needs."""
    await create(k8s, SECRETS, {"apiVersion": "v1", "kind": "Secret",
                                "metadata": {"name": "s3-creds", "namespace": NAMESPACE},
                                "data": {"AWS_ACCESS_KEY_ID": "QQ==", "AWS_SECRET_ACCESS_KEY": "Qg=="}})


def secret_reads(k8s: kmock.KubernetesEmulator) -> int:
    return len([r for r in list(k8s) if r.method == kmock.method.GET and r.url.path == f"{SECRETS}/s3-creds"])


async def test_a_missing_secret_heals_at_the_next_round_and_a_good_one_is_not_read_again_until_the_recheck(
    k8s: kmock.KubernetesEmulator, clock: Clock, checks: credentials.SecretChecks
) -> None:

    assert (await checks.verdict(NAMESPACE, SPEC))[:2] == ("False", "SecretNotFound")
    await create_secret(k8s)
    # Not good yet: read on the very next round, which finds it.
    assert (await checks.verdict(NAMESPACE, SPEC))[:2] == ("True", "SecretFound")
    assert secret_reads(k8s) == 2

    # Good: the rounds within SECRET_RECHECK do not read it.
    await delete(k8s, f"{SECRETS}/s3-creds")
    clock.now += credentials.SECRET_RECHECK - 1
    assert (await checks.verdict(NAMESPACE, SPEC))[:2] == ("True", "SecretFound")
    assert secret_reads(k8s) == 2
    # A spec change reads it at once.
    assert (await checks.verdict(NAMESPACE, SPEC, fresh=True))[:2] == ("False", "SecretNotFound")
    assert secret_reads(k8s) == 3


async def test_a_deleted_secret_is_noticed_once_the_recheck_is_due(
    k8s: kmock.KubernetesEmulator, clock: Clock, checks: credentials.SecretChecks
) -> None:
    await create_secret(k8s)
    assert (await checks.verdict(NAMESPACE, SPEC))[0] == "True"
    await delete(k8s, f"{SECRETS}/s3-creds")

    clock.now += credentials.SECRET_RECHECK
    assert (await checks.verdict(NAMESPACE, SPEC))[:2] == ("False", "SecretNotFound")
    # Not good: every round reads it again.
    assert (await checks.verdict(NAMESPACE, SPEC))[:2] == ("False", "SecretNotFound")
    assert secret_reads(k8s) == 3


async def test_a_secret_the_operator_may_not_read_is_asked_for_again_only_after_the_recheck(
    k8s: kmock.KubernetesEmulator, clock: Clock, checks: credentials.SecretChecks
) -> None:
    k8s[f"get {SECRETS}/s3-creds"].override << 403

    assert (await checks.verdict(NAMESPACE, SPEC))[:2] == ("Unknown", "SecretUnreadable")
    clock.now += credentials.SECRET_RECHECK - 1
    assert (await checks.verdict(NAMESPACE, SPEC))[:2] == ("Unknown", "SecretUnreadable")
    assert secret_reads(k8s) == 1
    clock.now += 1
    assert (await checks.verdict(NAMESPACE, SPEC))[:2] == ("Unknown", "SecretUnreadable")
    assert secret_reads(k8s) == 2
