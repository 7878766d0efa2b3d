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
    DEPLOYMENTS,
    PODS,
    REPLICAS,
    REPLICASETS,
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


async def test_a_deployment_scaled_to_two_is_reported_from_the_workload_indexes(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options
) -> None:
    await deployment_with_pod(k8s)
    await create(k8s, REPLICAS, make_replica())

    def single_writer() -> dict[str, Any] | None:
        return condition(stored(k8s, REPLICA, "db"), guards.SINGLE_WRITER)

    assert (await eventually(single_writer, seconds=WAIT))["status"] == "True"
    await patch(k8s, f"{DEPLOYMENTS}/app", {"spec": {"replicas": 2}})

    cond = await eventually(lambda: (found := single_writer()) and found["status"] == "False" and found,
                            seconds=WAIT)
    assert cond["reason"] == "MultipleWriters"
    assert "Deployment app has spec.replicas=2: set spec.replicas to 1" in cond["message"]
    # Every round read the workloads from the watches' indexes, none from the API server.
    gets = [r.url.path for r in list(k8s) if r.method == kmock.method.GET and "watch" not in r.url.query]
    assert not [path for path in gets if path.startswith((DEPLOYMENTS + "/", REPLICASETS + "/"))]


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
