"""The verification timer against kmock, for what the real API server refuses at apply time."""

from typing import Any

import kmock
import pytest
from kube_helpers import create, eventually, make_replica
from lifeboat.operator import handlers
from workloads import REPLICAS, condition, events, name_generated_objects, stored


@pytest.fixture(autouse=True)
def named_events(k8s: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    name_generated_objects(k8s, monkeypatch)


async def test_a_schedule_that_slipped_past_validation_is_reported(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options
) -> None:
    # As if applied while neither the CEL rule nor the validating webhook was in place.
    await create(k8s, REPLICAS, make_replica(verify={"schedule": "61 * * * *"}))

    def verified() -> dict[str, Any] | None:
        return condition(stored(k8s, "lifeboat.dev/v1alpha1/sqlitereplicas", "db"), "Verified")

    cond = await eventually(verified)
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSchedule")
    assert cond["message"] == "spec.verify.schedule '61 * * * *': minute 61 is out of range 0-59"
    await eventually(lambda: [e for e in events(k8s, "db") if e["reason"] == "InvalidSchedule"])
    assert not stored(k8s, "lifeboat.dev/v1alpha1/sqlitereplicas", "db").get("status", {}).get("verification")
