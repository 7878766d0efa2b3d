"""Single-writer guards, drift (labelled pods without the agent) and the operator's metrics: kopf
against kmock, the test playing the Deployment/ReplicaSet controllers; plus the pure checks."""

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import kmock
import pytest
from kube_helpers import create, eventually, free_port, make_replica, running_operator
from lifeboat.operator import guards, handlers, webhook
from workloads import (
    PODS,
    REPLICAS,
    condition,
    deployment_with_pod,
    events,
    name_generated_objects,
    owner,
    patch,
    pod,
    stored,
)

REPLICA = "lifeboat.dev/v1alpha1/sqlitereplicas"
WAIT = handlers.STATUS_INTERVAL + 10


@pytest.fixture(autouse=True)
def named_events(k8s: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    name_generated_objects(k8s, monkeypatch)


@pytest.fixture
async def operator_with_metrics(
    k8s: kmock.KubernetesEmulator, kubeconfig: None, tls: webhook.TLSBundle, tmp_path: Any
) -> AsyncIterator[handlers.Options]:
    options = handlers.Options(namespaces=("apps",), webhook_addr="127.0.0.1", webhook_port=free_port(),
                               tls_dir=tmp_path / "tls", agent_image="lifeboat:test",
                               metrics_port=free_port(), metrics_addr="127.0.0.1")
    async with running_operator(options):
        yield options


def single_writer(k8s: kmock.KubernetesEmulator) -> dict[str, Any] | None:
    return condition(stored(k8s, REPLICA, "db"), guards.SINGLE_WRITER)


async def test_two_replicas_fail_single_writer_naming_spec_replicas(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options
) -> None:
    await deployment_with_pod(k8s, replicas=2, pods=2)
    await create(k8s, REPLICAS, make_replica())

    cond = await eventually(lambda: single_writer(k8s), seconds=WAIT)
    assert (cond["status"], cond["reason"]) == ("False", "MultipleWriters")
    assert "Deployment app has spec.replicas=2: set spec.replicas to 1" in cond["message"]
    assert "2 pods run the agent at once (app-7d9f-0, app-7d9f-1)" in cond["message"]
    warning = await eventually(lambda: [e for e in events(k8s, "db") if e.get("reason") == "MultipleWriters"])
    assert warning[0]["type"] == "Warning" and "spec.replicas" in warning[0]["message"]


async def test_max_surge_fails_single_writer_naming_the_strategy(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options
) -> None:
    await deployment_with_pod(k8s, strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}})
    await create(k8s, REPLICAS, make_replica())

    cond = await eventually(lambda: single_writer(k8s), seconds=WAIT)
    assert cond["status"] == "False"
    assert "spec.strategy.rollingUpdate.maxSurge=1" in cond["message"]
    assert "set spec.strategy.type to Recreate, or spec.strategy.rollingUpdate.maxSurge to 0" in cond["message"]
    assert "spec.replicas" not in cond["message"]


async def test_recreate_single_replica_is_a_single_writer(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options
) -> None:
    await deployment_with_pod(k8s)
    await create(k8s, REPLICAS, make_replica())

    cond = await eventually(lambda: single_writer(k8s), seconds=WAIT)
    assert (cond["status"], cond["reason"]) == ("True", "SingleWriter")


async def test_labelled_pod_without_agent_is_reported_and_counted(
    k8s: kmock.KubernetesEmulator, operator_with_metrics: handlers.Options
) -> None:
    # Created unlabelled (the webhook skips it), then labelled: it runs no agent.
    await create(k8s, PODS, pod("late-0", replica=None, injected=False, owners=owner("ReplicaSet", "late")))
    await patch(k8s, f"{PODS}/late-0", {"metadata": {"labels": {"lifeboat.dev/replica": "db"}}})
    await create(k8s, REPLICAS, make_replica())

    def injected() -> dict[str, Any] | None:
        return condition(stored(k8s, REPLICA, "db"), guards.INJECTED)

    cond = await eventually(injected, seconds=WAIT)
    assert (cond["status"], cond["reason"]) == ("False", "UninjectedPods")
    assert "late-0" in cond["message"] and "recreateUninjected" in cond["message"]
    assert stored(k8s, REPLICA, "db")["status"]["uninjectedPods"] == ["late-0"]
    assert [e for e in events(k8s, "db") if e.get("reason") == "UninjectedPods"]
    assert stored(k8s, "v1/pods", "late-0") is not None  # reported only, never deleted by default

    url = f"http://127.0.0.1:{operator_with_metrics.metrics_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    assert 'lifeboat_operator_uninjected_pods{namespace="apps",replica="db"} 1.0' in text
    assert "lifeboat_operator_restores_total" in text and "lifeboat_operator_reconcile_errors_total" in text


async def test_recreate_uninjected_deletes_only_controlled_pods(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options
) -> None:
    await create(k8s, PODS, pod("owned-0", replica=None, injected=False, owners=owner("ReplicaSet", "owned")))
    await create(k8s, PODS, pod("bare", replica=None, injected=False))
    for name in ("owned-0", "bare"):
        await patch(k8s, f"{PODS}/{name}", {"metadata": {"labels": {"lifeboat.dev/replica": "db"}}})
    await create(k8s, REPLICAS, make_replica(recreateUninjected=True))

    await eventually(lambda: stored(k8s, "v1/pods", "owned-0") is None, seconds=WAIT)
    # The round that deletes owned-0 says so in an Event; a later round may already see it gone,
    # so the condition itself is only sure to name the pod it keeps.
    warning = await eventually(lambda: next((e for e in events(k8s, "db")
                                              if "deleting owned-0" in e.get("message", "")), None))
    assert "not deleting bare" in warning["message"]
    cond = await eventually(lambda: condition(stored(k8s, REPLICA, "db"), guards.INJECTED))
    assert cond["status"] == "False" and "not deleting bare" in cond["message"]
    assert stored(k8s, "v1/pods", "bare") is not None


# --- pure ------------------------------------------------------------------------------------------

def deployment(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "app"}, "spec": spec}


@pytest.mark.parametrize(("spec", "fragment"), [
    ({"replicas": 3, "strategy": {"type": "Recreate"}}, "spec.replicas=3"),
    ({"replicas": 1}, "maxSurge=25%"),  # the Deployment default strategy surges
    ({"replicas": 1, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "10%"}}}, "maxSurge=10%"),
])
def test_workload_problems_name_the_field(spec: dict[str, Any], fragment: str) -> None:
    (problem,) = guards.workload_problems("Deployment", deployment(**spec))
    assert fragment in problem


@pytest.mark.parametrize("spec", [
    {"replicas": 1, "strategy": {"type": "Recreate"}},
    {"replicas": 1, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0}}},
    {"replicas": 0, "strategy": {"rollingUpdate": {"maxSurge": "0%"}}},
])
def test_single_writer_workloads_pass(spec: dict[str, Any]) -> None:
    assert guards.workload_problems("Deployment", deployment(**spec)) == []


def test_statefulset_rollouts_never_surge() -> None:
    assert guards.workload_problems("StatefulSet", {"metadata": {"name": "db"}, "spec": {"replicas": 1}}) == []


def test_workload_is_found_through_the_replicaset() -> None:
    replicasets = {"app-1": {"metadata": {"ownerReferences": owner("Deployment", "app")}}}
    assert guards.workload_ref(pod("p", owners=owner("ReplicaSet", "app-1")), replicasets) == ("Deployment", "app")
    assert guards.workload_ref(pod("p", owners=owner("StatefulSet", "db")), {}) == ("StatefulSet", "db")
    assert guards.workload_ref(pod("p", owners=owner("Job", "j", "batch/v1")), {}) is None
    assert guards.workload_ref(pod("p"), {}) is None
