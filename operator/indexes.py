"""What the operator keeps in memory from kopf's watches, so that no admission and no status round
reads the API server for it: SQLiteReplicas, SQLiteRestores, the pods carrying a replica label, and
the workloads that may own them (ReplicaSets, Deployments, StatefulSets) for the single-writer guard.

kopf fills an index from the watch of its kind; the watches run on the leading replica only (peering
pauses the others), while every replica serves the webhook. So the webhook reads an index only where
it is live (``trusted``, see :mod:`lifeboat.operator.leadership`) and the API server otherwise; and a
SQLiteReplica missing from the index is looked up on the API server before a pod is refused for it
(a watch shows a new object a moment after the API server took it).

Each entry is a plain copy of only the fields its readers use: kopf's bodies are live views, and a
pod's full spec and status would hold far more memory than these few fields.
"""

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
from lifeboat.operator import guards, kube
from lifeboat.operator import spec as specs

# Index keys: a SQLiteReplica by (namespace, name); labelled pods by (namespace, replica label value);
# SQLiteRestores by namespace; workloads by (namespace, name), one index per kind.
ReplicaKey = tuple[str, str]
RESTORES = "sqliterestores"
ByName = kopf.Index[ReplicaKey, dict[str, Any]]  # an index keyed by (namespace, name)
# Objects per page of the list each watch starts with (at a start, and on taking the lead). Unpaged,
# the list of 1,000 labelled pods is 6.9 MB of JSON that parses into 34 MB of dicts, all at once and
# on top of every other kind's list: the operator's peak memory was that first listing. A page at a
# time holds at most this many objects in flight, for one request more per this many objects.
LIST_CHUNK = 500


def replica_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    """A SQLiteReplica as the webhook injects from it (metadata, spec and status)."""
    entry = {key: body[key] for key in ("apiVersion", "kind", "spec", "status") if key in body}
    entry["metadata"] = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    return copy.deepcopy(entry)


def pod_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a pod the status round and the guards read: identity, owner, containers' names, state."""
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    return copy.deepcopy({
        "metadata": {key: metadata[key] for key in ("name", "namespace", "labels", "ownerReferences",
                                                    "deletionTimestamp") if key in metadata},
        "spec": {key: [{"name": c.get("name")} for c in spec.get(key) or []]
                 for key in ("containers", "initContainers")},
        "status": {key: status[key] for key in ("phase", "podIP", "initContainerStatuses") if key in status},
    })


def workload_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a workload the single-writer guard reads: its name, its controller, and
    ``spec.replicas`` and ``spec.strategy`` (absent ones stay absent: the guard applies the API's defaults)."""
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    controllers = [{key: ref.get(key) for key in ("kind", "name", "controller")}
                   for ref in metadata.get("ownerReferences") or [] if ref.get("controller")]
    return copy.deepcopy({
        "metadata": {"name": metadata.get("name"), **({"ownerReferences": controllers} if controllers else {})},
        "spec": {key: spec[key] for key in ("replicas", "strategy") if key in spec},
    })


def restore_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    """A SQLiteRestore as the webhook's refusal of pods during a restore reads it."""
    return copy.deepcopy({"metadata": {"name": (body.get("metadata") or {}).get("name")},
                          "spec": dict(body.get("spec") or {}),
                          "status": {"phase": (body.get("status") or {}).get("phase")}})


def configure_watches(settings: kopf.OperatorSettings) -> None:
    """Have the API server send kopf's pod watch only pods carrying a replica label, not every pod;
    and list in pages."""
    settings.watching.label_selectors["", "v1", "pods"] = specs.REPLICA_LABEL
    settings.watching.chunk_size = LIST_CHUNK


@kopf.index(specs.GROUP, specs.VERSION, specs.PLURAL)
def replica_index(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[ReplicaKey, dict[str, Any]]:
    """Every SQLiteReplica, by (namespace, name)."""
    return {(namespace, name): replica_entry(body)}


@kopf.index("", "v1", "pods", labels={specs.REPLICA_LABEL: kopf.PRESENT})
def pod_index(body: kopf.Body, namespace: str, labels: kopf.Labels, **_: Any) -> dict[ReplicaKey, dict[str, Any]]:
    """Every pod carrying the replica label, by (namespace, label value)."""
    return {(namespace, labels[specs.REPLICA_LABEL]): pod_entry(body)}


# Workloads cannot be selected by label (the replica label is on their pod template, or only on the
# pods), so every one in the watched namespaces is watched; each entry is a few fields.
@kopf.index("apps", "v1", "replicasets")
def replicaset_index(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[ReplicaKey, dict[str, Any]]:
    """Every ReplicaSet, by (namespace, name)."""
    return {(namespace, name): workload_entry(body)}


@kopf.index("apps", "v1", "deployments")
def deployment_index(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[ReplicaKey, dict[str, Any]]:
    """Every Deployment, by (namespace, name)."""
    return {(namespace, name): workload_entry(body)}


@kopf.index("apps", "v1", "statefulsets")
def statefulset_index(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[ReplicaKey, dict[str, Any]]:
    """Every StatefulSet, by (namespace, name)."""
    return {(namespace, name): workload_entry(body)}


@kopf.index(specs.GROUP, specs.VERSION, RESTORES)
def restore_index(body: kopf.Body, namespace: str, **_: Any) -> dict[str, dict[str, Any]]:
    """Every SQLiteRestore, by namespace."""
    return {namespace: restore_entry(body)}


async def find_replica(
    lifeboat: kube.Kube, index: kopf.Index[ReplicaKey, dict[str, Any]], namespace: str, name: str, *,
    trusted: bool,
) -> dict[str, Any] | None:
    """The SQLiteReplica from the index where it is live; else, or on a miss, from the API server."""
    if trusted:
        for replica in index.get((namespace, name), ()):
            return replica
    return await lifeboat.replica(namespace, name)


async def restores(
    lifeboat: kube.Kube, index: kopf.Index[str, dict[str, Any]], namespace: str, *, trusted: bool
) -> list[dict[str, Any]]:
    """The SQLiteRestores of a namespace: from the index where it is live, else from the API server.

    An index that is not live cannot tell "no restore" from "not seen": that would let a pod start
    while a restore writes its volume.
    """
    if trusted:
        return list(index.get(namespace, ()))
    return await lifeboat.restores(namespace)


def labelled_pods(index: kopf.Index[ReplicaKey, dict[str, Any]], namespace: str, replica: str) -> list[dict[str, Any]]:
    """The pods carrying ``replica``'s label, sorted by name (read by handlers of the leading replica only)."""
    return sorted(index.get((namespace, replica), ()), key=lambda p: p["metadata"]["name"])


def one(index: ByName, namespace: str, name: str) -> dict[str, Any] | None:
    """The entry of ``index`` for (namespace, name), or None."""
    for entry in index.get((namespace, name), ()):
        return entry
    return None


def owning_workloads(
    namespace: str, pods: Sequence[Mapping[str, Any]], replicasets: ByName, deployments: ByName,
    statefulsets: ByName,
) -> list[tuple[str, dict[str, Any]]]:
    """The Deployments/StatefulSets owning these pods (through their ReplicaSets), as (kind, entry),
    from the workload indexes (read by handlers of the leading replica only)."""
    by_kind = {"Deployment": deployments, "StatefulSet": statefulsets}
    owned = {owner[1]: one(replicasets, namespace, owner[1]) or {}
             for pod in pods if (owner := guards.controller_of(pod)) and owner[0] == "ReplicaSet"}
    refs = {ref for pod in pods if (ref := guards.workload_ref(pod, owned))}
    return [(kind, entry) for kind, name in sorted(refs) if (entry := one(by_kind[kind], namespace, name))]
