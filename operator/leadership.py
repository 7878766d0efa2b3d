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

import asyncio
import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf
from lifeboat.operator import kube

GROUP, VERSION = "kopf.dev", "v1"
# A live replica refreshes its record every 5-10 s (kopf: lifetime minus 5-10 s, at least 1 s);
# a record this old is of a dead replica. Also the longest takeover after a crash.
LIFETIME = 15
# How often a replica reads the peering objects to know whether it leads (see Lead).
LEAD_POLL = 3.0


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


def leads(peers: Mapping[str, Mapping[str, Any]], priority: int, now: datetime.datetime) -> bool:
    """Whether no live record among a peering object's ``peers`` outranks ``priority``: kopf's rule
    for not pausing (a record is live until its ``lastseen`` plus ``lifetime`` seconds)."""
    for record in peers.values():
        lastseen = record.get("lastseen")
        seen = datetime.datetime.fromisoformat(lastseen) if lastseen else now
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=datetime.UTC)
        alive = seen + datetime.timedelta(seconds=int(record.get("lifetime", 60))) > now
        if alive and int(record.get("priority", 0)) > priority:
            return False
    return True


class Lead:
    """Whether this replica's watches run, so that kopf's indexes in it are live (``trusted``).

    kopf does not tell its handlers when peering pauses it; this reads the same peering records kopf
    decides on. kopf resumes and then lists every kind, so a replica is trusted from its second
    leading round in a row; it loses the trust within one round of being paused.
    """

    def __init__(self, *, standalone: bool) -> None:
        self.trusted = standalone  # no peering: never paused

    async def follow(self, lifeboat: kube.Kube, name: str, priority: int, namespaces: tuple[str, ...]) -> None:
        """Re-evaluate ``trusted`` every ``LEAD_POLL`` seconds, forever."""
        streak = 0
        while True:
            try:
                now = datetime.datetime.now(datetime.UTC)
                leading = True
                for plural, namespace in peering_objects(namespaces):
                    found = await lifeboat.peering(GROUP, VERSION, plural, namespace, name) or {}
                    leading = leading and leads(found.get("status") or {}, priority, now)
            except Exception as exc:  # whatever failed, the indexes are not known to be live
                logging.getLogger(__name__).debug("Cannot read the peering records: %s", exc)
                leading = False
            streak = streak + 1 if leading else 0
            self.trusted = streak >= 2
            await asyncio.sleep(LEAD_POLL)


@kopf.on.startup()
async def follow_lead(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """``memo.lead``: whether the webhook may trust this replica's indexes."""
    memo.lead = Lead(standalone=settings.peering.standalone)
    if not settings.peering.standalone:
        memo.lead_rounds = asyncio.create_task(
            memo.lead.follow(kube.Kube(kube.load_api_client()), settings.peering.name,
                             settings.peering.priority, memo.options.namespaces), name="peering lead")


@kopf.on.cleanup()
async def stop_following_lead(memo: kopf.Memo, **_: Any) -> None:
    """Stop reading the peering records."""
    rounds = getattr(memo, "lead_rounds", None)
    if rounds is not None:
        rounds.cancel()
