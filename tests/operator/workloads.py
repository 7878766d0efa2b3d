"""Workload objects as the Deployment and ReplicaSet controllers would leave them in kmock (which runs none)."""

from typing import Any

import kmock
from kube_helpers import NAMESPACE, create

PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
REPLICASETS = f"/apis/apps/v1/namespaces/{NAMESPACE}/replicasets"
JOBS = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
REPLICAS = f"/apis/lifeboat.dev/v1alpha1/namespaces/{NAMESPACE}/sqlitereplicas"
RESTORES = f"/apis/lifeboat.dev/v1alpha1/namespaces/{NAMESPACE}/sqliterestores"


def owner(kind: str, name: str, api: str = "apps/v1") -> list[dict[str, Any]]:
    return [{"apiVersion": api, "kind": kind, "name": name, "uid": f"uid-{name}", "controller": True,
             "blockOwnerDeletion": True}]


def template(replica: str = "db") -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "app", "lifeboat.dev/replica": replica}},
        "spec": {
            "securityContext": {"fsGroup": 10001},
            "containers": [{"name": "app", "image": "app:1", "securityContext": {"runAsUser": 10001},
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "app-data"}}],
        },
    }


async def deployment_with_pod(
    k8s: kmock.KubernetesEmulator, *, name: str = "app", replicas: int = 1,
    strategy: dict[str, Any] | None = None, pods: int = 1, injected: bool = True, replica: str = "db",
) -> list[str]:
    """A Deployment, its ReplicaSet and its running pods (carrying the replica label); the pod names."""
    await create(k8s, DEPLOYMENTS, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "app"}},
                 "strategy": strategy if strategy is not None else {"type": "Recreate"},
                 "template": template(replica)}})
    await create(k8s, REPLICASETS, {
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": f"{name}-7d9f", "namespace": NAMESPACE, "ownerReferences": owner("Deployment", name)},
        "spec": {"replicas": replicas, "template": template(replica)}})
    names = []
    for index in range(pods):
        pod_name = f"{name}-7d9f-{index}"
        await create(k8s, PODS, pod(pod_name, replica=replica, injected=injected,
                                    owners=owner("ReplicaSet", f"{name}-7d9f")))
        names.append(pod_name)
    return names


def pod(name: str, *, replica: str | None = "db", injected: bool = True,
        owners: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec = template()["spec"]
    if injected:
        spec["initContainers"] = [{"name": "lifeboat-agent", "image": "lifeboat:test", "restartPolicy": "Always"}]
    labels = {"app": "app"} | ({"lifeboat.dev/replica": replica} if replica else {})
    metadata: dict[str, Any] = {"name": name, "namespace": NAMESPACE, "labels": labels}
    if owners:
        metadata["ownerReferences"] = owners
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec,
            "status": {"phase": "Running", "podIP": "127.0.0.2"}}


async def patch(k8s: kmock.KubernetesEmulator, path: str, body: dict[str, Any]) -> None:
    async with k8s.patch(path, json=body, headers={"Content-Type": "application/merge-patch+json"}) as response:
        assert response.status < 300, await response.text()


async def delete(k8s: kmock.KubernetesEmulator, path: str) -> None:
    async with k8s.delete(path) as response:
        assert response.status < 300, await response.text()


def stored(k8s: kmock.KubernetesEmulator, resource: str, name: str) -> dict[str, Any] | None:
    try:
        obj = k8s.objects[resource, NAMESPACE, name]
    except KeyError:
        return None
    return None if obj.deleted else dict(obj.raw)


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return cond
    return None


def events(k8s: kmock.KubernetesEmulator, name: str) -> list[dict[str, Any]]:
    return [obj.raw for (resource, _, _), obj in list(k8s.objects.items())
            if resource.plural == "events" and not obj.deleted
            and (obj.raw.get("involvedObject") or {}).get("name") == name]


def name_generated_objects(k8s: kmock.KubernetesEmulator, monkeypatch: Any) -> None:
    """Give objects created with only ``generateName`` (kopf's Events) a name, as an API server does.

    kmock keys objects by name, so every nameless Event would collide with the first one (409).
    """
    import itertools

    from kmock._internal import enums
    cls = type(k8s)
    handle = cls._handle
    counter = itertools.count()

    async def named(self: Any, request: Any) -> Any:
        data = request.data
        if request.action == enums.action.CREATE and isinstance(data, dict):
            metadata = data.setdefault("metadata", {})
            if not metadata.get("name") and metadata.get("generateName"):
                metadata["name"] = f"{metadata['generateName']}{next(counter):05d}"
                metadata.setdefault("resourceVersion", "1")
        return await handle(self, request)

    monkeypatch.setattr(cls, "_handle", named)
