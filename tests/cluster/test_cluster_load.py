"""The operator's API load: a status round that finds nothing new writes nothing; the webhook answers
from indexes, which a replica that does not lead does not have.

The session's operator runs with a one-second status round (a test-only setting) so that several rounds
pass within the test. The operator must send no status patch (kopf logs each one it sends), and the
SQLiteReplica's resourceVersion, which every write moves, must not move.

A second replica started beside it does not lead: peering pauses its watches, so its indexes stay empty.
Admissions through it alone must still see the SQLiteReplicas and SQLiteRestores that exist.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import inplace
import pytest
from k8s import Operator, wait_until
from lifeboat.operator import handlers

NAMESPACE = "load"
NAME = "quiet"
ROUNDS = 4


def replica() -> dict[str, Any]:
    return {"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteReplica",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {"database": "/data/app.db", "replica": {"url": f"s3://backups/{NAMESPACE}/{NAME}"}}}


def labelled_pod() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "app", "namespace": NAMESPACE, "labels": {"lifeboat.dev/replica": NAME}},
            "spec": {"containers": [{"name": "app", "image": "app:1",
                                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                     "volumes": [{"name": "data", "emptyDir": {}}]}}


@pytest.fixture(scope="module")
def fast(operator: Operator) -> Iterator[Operator]:
    """The session's operator with a one-second status round; back to the default afterwards."""
    cluster = operator.cluster
    cluster.kubectl("create", "namespace", NAMESPACE)
    operator.stop()
    operator.env[handlers.TEST_STATUS_INTERVAL_ENV] = "1"
    try:
        operator.start()
        yield operator
    finally:
        operator.stop()
        operator.env.pop(handlers.TEST_STATUS_INTERVAL_ENV, None)
        operator.start()
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false")


def rounds(operator: Operator) -> int:
    """How many status rounds ran to success on the SQLiteReplica (kopf logs each)."""
    return sum(1 for line in operator.log.read_text().splitlines()
               if f"[{NAMESPACE}/{NAME}]" in line and "Timer 'collect_status' succeeded" in line)


def status_patches(operator: Operator, since: int) -> list[str]:
    """The log lines, after the first ``since`` characters, of kopf patching the SQLiteReplica's status."""
    return [line for line in operator.log.read_text()[since:].splitlines()
            if f"[{NAMESPACE}/{NAME}]" in line and "-patching the status with" in line]


def test_rounds_that_find_nothing_new_write_nothing(fast: Operator) -> None:
    cluster = fast.cluster
    cluster.apply(replica())
    cluster.apply(labelled_pod())

    def settled() -> bool:  # the pod runs and the status has seen it
        status = cluster.get("sqlitereplica", NAME, namespace=NAMESPACE).get("status") or {}
        return [p.get("name") for p in status.get("pods") or []] == ["app"]

    wait_until(settled, 120, "the status round's report of the running pod")
    # A round already under way may still carry the change: start counting after the next one.
    first = rounds(fast) + 1
    wait_until(lambda: rounds(fast) >= first, 60, "one more status round")
    before = cluster.get("sqlitereplica", NAME, namespace=NAMESPACE)["metadata"]["resourceVersion"]
    since = len(fast.log.read_text())
    wait_until(lambda: rounds(fast) >= first + ROUNDS, 120, f"{ROUNDS} more status rounds")
    after = cluster.get("sqlitereplica", NAME, namespace=NAMESPACE)
    assert status_patches(fast, since) == []
    assert after["metadata"]["resourceVersion"] == before, after.get("status")


@pytest.fixture
def follower(fast: Operator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """A second replica, started after the session's operator: it does not lead."""
    second = Operator.from_chart(fast.cluster, tmp_path_factory.mktemp("operator-second"), replica="second")
    second.start()
    try:
        yield second
    finally:
        second.stop()
        second.unroute()


def admit(operator: Operator, pod: dict[str, Any]) -> dict[str, Any]:
    """The answer of ``operator``'s own webhook server to the AdmissionReview of creating ``pod``.

    Sent to that replica directly, as the API server sends it: the API server's choice among the
    webhook Service's endpoints cannot be steered from here.
    """
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
                          "resource": {"group": "", "version": "v1", "resource": "pods"},
                          "namespace": NAMESPACE, "operation": "CREATE", "userInfo": {"username": "test"},
                          "object": pod, "oldObject": None, "dryRun": False}}
    # The certificate names the Service, not this host's address: the chain is what is checked.
    context = ssl.create_default_context(cafile=str(operator.workdir / "tls" / "ca.crt"))
    context.check_hostname = False
    request = urllib.request.Request(f"https://{operator.address}:{operator.webhook_port}/inject",
                                     data=json.dumps(review).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, context=context, timeout=30) as response:
        answer: dict[str, Any] = json.load(response)["response"]
    return answer


def test_admissions_by_a_replica_that_does_not_lead_see_what_exists(fast: Operator, follower: Operator) -> None:
    cluster = fast.cluster
    inplace.deploy(cluster, NAMESPACE)
    inplace.start_restore(cluster, NAMESPACE, "held")
    job = wait_until(lambda: inplace.status(cluster, NAMESPACE, "held").get("job"), 120, "the restore Job")
    cluster.apply(replica())
    wait_until(lambda: cluster.exists("configmap", f"{NAME}-lifeboat", NAMESPACE), 60, "the agent ConfigMap")
    try:
        # Peering pauses the follower's watches: its indexes are empty.
        assert "Resuming operations after the pause" not in follower.log.read_text(), follower.tail()
        # A SQLiteReplica missing from its index is read from the API server, not denied.
        admitted = admit(follower, labelled_pod())
        assert admitted["allowed"] is True, admitted
        assert admitted["patch"]
        # A SQLiteRestore missing from its index is seen too: the app's volume is being written.
        held = {**labelled_pod(), "metadata": {"name": "during-restore", "namespace": NAMESPACE,
                                               "labels": {"lifeboat.dev/replica": inplace.REPLICA}}}
        refused = admit(follower, held)
        assert refused["allowed"] is False, refused
        assert "SQLiteRestore held is restoring SQLiteReplica db in place" in refused["status"]["message"]
        # The leader answers the same from its indexes.
        assert admit(fast, held)["allowed"] is False
    finally:
        inplace.end_job(cluster, NAMESPACE, job)
    assert inplace.finished(cluster, NAMESPACE, "held")["phase"] == "Succeeded"
