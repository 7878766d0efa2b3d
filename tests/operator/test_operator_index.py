"""The admission path and the status round read kopf's indexes, not the API server."""

from typing import Any

import kmock
from kube_helpers import NAMESPACE, create, eventually, make_pod, make_replica
from lifeboat.operator import handlers, indexes, kube, webhook
from lifeboat.operator import spec as specs
from test_operator_webhook import PODS, REPLICAS, call, review

# What the admission path would read from the API server without its indexes and its cache.
ADMISSION_READS = (f"{REPLICAS}/db", f"/apis/lifeboat.dev/v1alpha1/namespaces/{NAMESPACE}/sqliterestores",
                   f"/api/v1/namespaces/{NAMESPACE}")


def reads(k8s: kmock.KubernetesEmulator, since: int) -> list[Any]:
    """The requests after the first ``since`` that are not watches."""
    return [r for r in list(k8s)[since:] if r.method == kmock.method.GET and "watch" not in r.url.query]


async def reconciled(k8s: kmock.KubernetesEmulator) -> None:
    """kopf runs no SQLiteReplica handler before its indexes are filled: once reconciled, all are filled."""
    await eventually(lambda: (k8s.objects["lifeboat.dev/v1alpha1/sqlitereplicas", NAMESPACE, "db"].raw
                              .get("status") or {}).get("configMap"))


async def test_once_the_indexes_are_filled_an_admission_costs_no_api_request(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options, tls: webhook.TLSBundle
) -> None:
    await create(k8s, REPLICAS, make_replica())
    await reconciled(k8s)
    # The namespace (OpenShift's uid range; kmock has none) is read once, then reused.
    assert (await call(operator, tls, "/inject", review(make_pod(), PODS)))["allowed"] is True
    since = len(list(k8s))

    for _ in range(3):
        response = await call(operator, tls, "/inject", review(make_pod(), PODS))
        assert response["allowed"] is True, response
        assert response["patch"]

    assert [r.url.path for r in reads(k8s, since) if r.url.path in ADMISSION_READS] == []


async def test_a_miss_or_an_index_that_is_not_live_reads_the_api_server(
    k8s: kmock.KubernetesEmulator, kubeconfig: None
) -> None:
    await create(k8s, REPLICAS, make_replica())
    lifeboat = kube.Kube(kube.load_api_client())
    stale = {(NAMESPACE, "db"): [{"spec": "stale"}]}
    since = len(list(k8s))

    assert (await indexes.find_replica(lifeboat, {}, NAMESPACE, "db", trusted=True))["spec"]["database"]
    assert (await indexes.find_replica(lifeboat, stale, NAMESPACE, "db", trusted=False))["spec"]["database"]
    assert await indexes.find_replica(lifeboat, stale, NAMESPACE, "db", trusted=True) == {"spec": "stale"}
    assert len([r for r in reads(k8s, since) if r.url.path == f"{REPLICAS}/db"]) == 2


def test_an_indexed_pod_keeps_only_what_the_status_round_and_the_guards_read() -> None:
    pod = make_pod(nodeName="node-1", initContainers=[{"name": "lifeboat-agent", "image": "a", "env": []}])
    pod["metadata"] |= {"name": "app-0", "namespace": NAMESPACE, "managedFields": [{"manager": "x"}],
                        "ownerReferences": [{"kind": "ReplicaSet", "name": "app-7d9f", "controller": True}]}
    pod["status"] = {"phase": "Running", "podIP": "10.0.0.1", "conditions": [{"type": "Ready"}],
                     "initContainerStatuses": [{"name": "lifeboat-restore", "state": {"running": {}}}]}
    entry = indexes.pod_entry(pod)
    assert entry == {
        "metadata": {"name": "app-0", "namespace": NAMESPACE, "labels": pod["metadata"]["labels"],
                     "ownerReferences": pod["metadata"]["ownerReferences"]},
        "spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "lifeboat-agent"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1",
                   "initContainerStatuses": pod["status"]["initContainerStatuses"]},
    }


def test_an_indexed_workload_keeps_only_what_the_single_writer_guard_reads() -> None:
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}
    deployment = {"metadata": {"name": "app", "namespace": NAMESPACE, "managedFields": [{"manager": "x"}],
                               "ownerReferences": [{"kind": "Other", "name": "o", "uid": "u"},
                                                   {"kind": "Owner", "name": "w", "uid": "v", "controller": True}]},
                  "spec": {"replicas": 2, "strategy": strategy, "template": {"spec": {"containers": []}}},
                  "status": {"replicas": 2}}
    assert indexes.workload_entry(deployment) == {
        "metadata": {"name": "app", "ownerReferences": [{"kind": "Owner", "name": "w", "controller": True}]},
        "spec": {"replicas": 2, "strategy": strategy},
    }
    # Absent fields stay absent: the guard applies the API's defaults to them.
    assert indexes.workload_entry({"metadata": {"name": "db"}, "spec": {}}) == {"metadata": {"name": "db"}, "spec": {}}


def test_the_owning_workloads_come_from_the_indexes_through_the_replicaset() -> None:
    replicasets = {(NAMESPACE, "app-7d9f"): [{"metadata": {"name": "app-7d9f", "ownerReferences": [
        {"kind": "Deployment", "name": "app", "controller": True}]}}]}
    deployments = {(NAMESPACE, "app"): [{"metadata": {"name": "app"}, "spec": {"replicas": 2}}]}
    statefulsets = {(NAMESPACE, "db"): [{"metadata": {"name": "db"}, "spec": {"replicas": 1}}]}

    def owned(kind: str, name: str) -> dict[str, Any]:
        owners = [{"kind": kind, "name": name, "controller": True}]
        return {"metadata": {"name": f"{name}-0", "ownerReferences": owners}}

    pods = [owned("ReplicaSet", "app-7d9f"), owned("StatefulSet", "db"), owned("ReplicaSet", "gone"),
            owned("StatefulSet", "missing")]
    assert indexes.owning_workloads(NAMESPACE, pods, replicasets, deployments, statefulsets) == [
        ("Deployment", deployments[NAMESPACE, "app"][0]), ("StatefulSet", statefulsets[NAMESPACE, "db"][0])]


async def test_every_watch_starts_with_a_list_in_pages(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options
) -> None:
    await create(k8s, REPLICAS, make_replica())
    await reconciled(k8s)
    # kopf's lists, not the status round's of followers.
    lists = [r.url for r in list(k8s) if r.method == kmock.method.GET and "watch" not in r.url.query
             and r.url.path.endswith(("/pods", "/replicasets", "/sqlitereplicas"))
             and r.url.query.get("labelSelector") != specs.FOLLOW_LABEL]
    assert {url.path.rpartition("/")[2] for url in lists} == {"pods", "replicasets", "sqlitereplicas"}
    assert {url.query.get("limit") for url in lists} == {str(indexes.LIST_CHUNK)}
