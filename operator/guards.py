"""Single-writer and drift checks on the pods that carry a SQLiteReplica's label. Pure.

A SQLite database must have exactly one writer: one pod, one agent. The checks read the workload that
owns the labelled pods (found through ownerReferences: Pod → ReplicaSet → Deployment, or Pod →
StatefulSet) and the pods themselves; each problem message names the field to change.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lifeboat.operator import injection
from lifeboat.operator import spec as specs

SINGLE_WRITER = "SingleWriter"
INJECTED = "Injected"
Verdict = tuple[str, str, str]


def controller_of(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the object's controlling owner, or None."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("kind", ""), ref.get("name", "")
    return None


def workload_ref(pod: Mapping[str, Any], replicasets: Mapping[str, Mapping[str, Any]]) -> tuple[str, str] | None:
    """The Deployment or StatefulSet owning ``pod`` as (kind, name); ``replicasets`` by name.

    None when the pod has no controller, or one that is neither (a bare ReplicaSet, a Job, ...).
    """
    owner = controller_of(pod)
    if owner is None:
        return None
    kind, name = owner
    if kind == "StatefulSet":
        return owner
    if kind == "ReplicaSet":
        replicaset = replicasets.get(name)
        parent = controller_of(replicaset) if replicaset else None
        if parent and parent[0] == "Deployment":
            return parent
    return None


def is_terminating(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def has_agent(pod: Mapping[str, Any]) -> bool:
    """Whether the pod runs the injected agent (as a native sidecar or a regular container)."""
    spec = pod.get("spec") or {}
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    return any(c.get("name") == injection.AGENT_CONTAINER for c in containers)


def runs_agent(pod: Mapping[str, Any]) -> bool:
    """A live pod with the agent in it: one writer to the replica."""
    phase = (pod.get("status") or {}).get("phase")
    return has_agent(pod) and phase in ("Running", "Pending") and not is_terminating(pod)


def _is_zero(value: Any) -> bool:
    return value in (0, "0", "0%")


def workload_problems(kind: str, workload: Mapping[str, Any]) -> list[str]:
    """What lets a Deployment/StatefulSet run two writers at once, each naming the field to change."""
    name = (workload.get("metadata") or {}).get("name", "?")
    spec = workload.get("spec") or {}
    found: list[str] = []
    replicas = spec.get("replicas", 1)
    if replicas is not None and replicas > 1:
        found.append(f"{kind} {name} has spec.replicas={replicas}: set spec.replicas to 1 "
                     "(a SQLite database has one writer)")
    if kind == "Deployment":
        strategy = spec.get("strategy") or {}
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            surge = (strategy.get("rollingUpdate") or {}).get("maxSurge", "25%")
            if not _is_zero(surge):
                found.append(
                    f"{kind} {name} rolls out with spec.strategy.rollingUpdate.maxSurge={surge} "
                    "(an old and a new pod write at once): set spec.strategy.type to Recreate, "
                    "or spec.strategy.rollingUpdate.maxSurge to 0")
    return found


def single_writer(
    pods: Sequence[Mapping[str, Any]], workloads: Iterable[tuple[str, Mapping[str, Any]]]
) -> Verdict:
    """The ``SingleWriter`` condition from the labelled pods and the (kind, object) owning them."""
    found: list[str] = []
    for kind, workload in workloads:
        found += workload_problems(kind, workload)
    writers = sorted(p["metadata"]["name"] for p in pods if runs_agent(p))
    if len(writers) > 1:
        found.append(f"{len(writers)} pods run the agent at once ({', '.join(writers)}): "
                     "one database must have one writer; scale the workload to spec.replicas=1")
    if found:
        return "False", "MultipleWriters", "; ".join(found)
    return "True", "SingleWriter", f"{len(writers)} pod(s) run the agent; no workload allows a second writer"


def uninjected(pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Labelled, live pods without the agent (created before the webhook, or labelled afterwards)."""
    return [p for p in pods if not has_agent(p) and not is_terminating(p)
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]


def drift(missing: Sequence[Mapping[str, Any]], *, recreate: bool) -> tuple[Verdict, list[str], list[str]]:
    """The ``Injected`` condition, and which pods to delete (controlled ones, when ``recreate``) or keep."""
    names = sorted(p["metadata"]["name"] for p in missing)
    if not names:
        return ("True", "AllInjected", "every labelled pod runs the agent"), [], []
    delete = sorted(p["metadata"]["name"] for p in missing if recreate and controller_of(p))
    keep = [n for n in names if n not in delete]
    message = f"pod(s) carry label {specs.REPLICA_LABEL} but run no agent: {', '.join(names)}"
    if delete:
        message += f"; deleting {', '.join(delete)} so their controller recreates them injected"
    if keep and recreate:
        message += f"; not deleting {', '.join(keep)}: no controller would recreate them"
    elif keep:
        message += "; delete them to have them recreated with the agent, or set spec.recreateUninjected: true"
    return ("False", "UninjectedPods", message), delete, keep
