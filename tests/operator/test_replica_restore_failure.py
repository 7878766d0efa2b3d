"""A pod whose restore init container failed: the SQLiteReplica says why (``Restored`` condition and a
Warning Event), from the container's termination message, which the injected container's
``terminationMessagePolicy: FallbackToLogsOnError`` fills with the error line."""

from typing import Any

import kmock
import pytest
from kube_helpers import NAMESPACE, create, eventually, make_pod, make_replica
from lifeboat.operator import handlers, injection
from lifeboat.operator import status as statuses
from workloads import condition, events, name_generated_objects, stored

REPLICAS = "/apis/lifeboat.dev/v1alpha1/namespaces/apps/sqlitereplicas"
ERROR = ("lifeboat restore: s3://backups/app: no matching backup files available for timestamp "
         "2026-01-01T00:00:00Z: the replica can restore from txid 0000000000000001 (created "
         "2026-02-01T00:00:00Z) to txid 0000000000000042 (created 2026-02-03T00:00:00Z)")


def restore_status(state: dict[str, Any], last: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"name": injection.RESTORE_CONTAINER, "state": state, "ready": False,
                              "restartCount": 1 if last else 0, "image": "lifeboat:test"}
    if last:
        status["lastState"] = last
    return status


def pod(name: str, *init_statuses: dict[str, Any], phase: str = "Pending") -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"lifeboat.dev/replica": "db"}},
            "status": {"phase": phase, "initContainerStatuses": list(init_statuses)}}


FAILED = {"terminated": {"exitCode": 1, "reason": "Error", "message": f"restoring: 3 files\n{ERROR}\n"}}
BACKOFF = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}}


def test_injected_restore_container_keeps_its_error_as_termination_message() -> None:
    restore = next(c for c in injection.inject(make_pod(), make_replica())["spec"]["initContainers"]
                   if c["name"] == injection.RESTORE_CONTAINER)
    assert restore["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_restore_verdict() -> None:
    assert statuses.restore_verdict([])[0] == "True"
    succeeded = restore_status({"terminated": {"exitCode": 0, "reason": "Completed"}},
                               last={"terminated": {"exitCode": 1, "message": "transient"}})
    assert statuses.restore_verdict([pod("ok", succeeded, phase="Running")])[0] == "True"
    # restartPolicy Never: terminated for good; Always: back-off with the failure as the last state
    for failed in (restore_status(FAILED), restore_status(BACKOFF, last=FAILED)):
        status_, reason, message = statuses.restore_verdict([pod("app-0", failed)])
        assert (status_, reason) == ("False", "RestoreFailed")
        assert message == f"pod app-0: the restore init container exited 1: {ERROR}"
    # no message at all (an older kubelet, or an OOM kill): the reason instead
    killed = restore_status({"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
    assert statuses.restore_verdict([pod("app-1", killed)])[2] == (
        "pod app-1: the restore init container exited 137: OOMKilled")


async def test_failed_restore_sets_condition_and_warning_event(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options, monkeypatch: pytest.MonkeyPatch
) -> None:
    name_generated_objects(k8s, monkeypatch)
    failing = {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": "app", "image": "app:1"}]},
               **pod("app-0", restore_status(BACKOFF, last=FAILED))}
    failing["metadata"]["namespace"] = NAMESPACE
    await create(k8s, f"/api/v1/namespaces/{NAMESPACE}/pods", failing)
    await create(k8s, REPLICAS, make_replica())

    def restored() -> dict[str, Any] | None:
        return condition(stored(k8s, "lifeboat.dev/v1alpha1/sqlitereplicas", "db"), "Restored")

    # Eventually, and over two rounds of the status timer: kmock does not serialise the reconcile's
    # and the timer's condition patches as an API server would.
    cond = await eventually(lambda: (c := restored()) and c["status"] == "False" and c,
                            seconds=2 * handlers.STATUS_INTERVAL + 10)
    assert cond["reason"] == "RestoreFailed"
    assert cond["message"] == f"pod app-0: the restore init container exited 1: {ERROR}"
    warning = (await eventually(lambda: [e for e in events(k8s, "db") if e.get("reason") == "RestoreFailed"]))[0]
    assert warning["type"] == "Warning"
    assert ERROR in warning["message"]
