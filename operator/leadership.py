"""One reconciling replica: kopf peering, the eldest replica leads.

Every replica runs kopf and serves the admission webhook; kopf's peering pauses all but one of
them. A paused replica keeps no watch open and runs no handler, timer or daemon, but its webhook
server goes on admitting pods. Each replica writes a keep-alive into the peering object's status
(``ClusterKopfPeering`` in all-namespace mode, a ``KopfPeering`` per watched namespace otherwise;
the chart creates them) and pauses while a live peer has a higher priority.

The priority is the replica's seniority: the earlier it started, the higher. The running leader
thus keeps its place when a replica (re)starts beside it, and two replicas never tie (a tie pauses
both). When the leader stops, it removes its record and the next replica resumes at once; when it
dies without that, the next resumes once the record's ``LIFETIME`` has run out.

Why peering and not a ``coordination.k8s.io`` Lease: kopf's pause is the gate a leader election
needs (it stops the watches, handlers, timers and daemons and leaves the webhook server alone),
and kopf offers no public way to pause an operator on any other signal.
"""

import time
from typing import Any

import kopf
from lifeboat.operator import kube

GROUP, VERSION = "kopf.dev", "v1"
# A live replica refreshes its record every 5-10 s (kopf: lifetime minus 5-10 s, at least 1 s);
# a record this old is of a dead replica. Also the longest takeover after a crash.
LIFETIME = 15


def seniority(started_ns: int | None = None) -> int:
    """The peering priority of a replica started at ``started_ns`` (``time.time_ns()``): earlier is higher.

    Microseconds: two replicas of one Deployment never start within the same one.
    """
    started = time.time_ns() if started_ns is None else started_ns
    return -(started // 1000)


def configure(settings: kopf.OperatorSettings, name: str, clusterwide: bool) -> None:
    """Peer through the peering object ``name``, by seniority."""
    settings.peering.name = name
    settings.peering.mandatory = True
    settings.peering.standalone = False
    settings.peering.clusterwide = clusterwide
    settings.peering.priority = seniority()
    settings.peering.lifetime = LIFETIME
    # Keep-alives every few seconds would flood the debug log.
    settings.peering.stealth = True


def peering_objects(namespaces: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """(plural, namespace) of every peering object the operator needs: one cluster-wide, or one per namespace."""
    if not namespaces:
        return [("clusterkopfpeerings", None)]
    return [("kopfpeerings", namespace) for namespace in namespaces]


async def missing_peerings(lifeboat: kube.Kube, name: str, namespaces: tuple[str, ...]) -> list[str]:
    """The peering objects that are absent or unreadable, as "Kind [namespace/]name (why)".

    kopf would wait for them forever, paused, without a word.
    """
    missing = []
    for plural, namespace in peering_objects(namespaces):
        kind = "ClusterKopfPeering" if namespace is None else "KopfPeering"
        where = f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"
        try:
            if await lifeboat.peering(GROUP, VERSION, plural, namespace, name) is None:
                missing.append(f"{where} (not found)")
        except kube.Forbidden:
            missing.append(f"{where} (forbidden: RBAC grants the release's own object only)")
    return missing


@kopf.on.startup()
async def check_peering(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Refuse to start without the peering objects: every replica would stay paused, silently."""
    if settings.peering.standalone:
        return
    # Its own client: it must not depend on the order in which kopf runs the startup handlers.
    lifeboat = kube.Kube(kube.load_api_client())
    missing = await missing_peerings(lifeboat, settings.peering.name, memo.options.namespaces)
    if missing:
        raise kopf.PermanentError(
            f"--peering: {', '.join(missing)}; the chart creates its own (their CRDs are in crds/: "
            "kubectl apply -f crds/); every replica would stay paused without it")
