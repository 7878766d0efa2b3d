"""The operator's API load at rest: a status round that finds nothing new writes nothing.

The session's operator runs with a one-second status round (a test-only setting) so that several rounds
pass within the test. The operator must send no status patch (kopf logs each one it sends), and the
SQLiteReplica's resourceVersion, which every write moves, must not move.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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
