"""The SQLiteReplica status: conditions, and the agents' replication state gathered from the pods.

Aggregation is pure; :func:`fetch_agent_status` is the only I/O (one GET of an agent's ``/status``).
"""

import asyncio
import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from lifeboat.operator.injection import RESTORE_CONTAINER

# The most of one pod's restore error a condition repeats (a message of many pods stays readable).
MESSAGE_LIMIT = 1000
# Status values that move on every round while nothing happens (the lag grows between uploads): a
# round writes them along with a material change, never alone. Ready still turns on the lag.
TICKING = frozenset({"lagSeconds", "lastSync"})


@dataclass(frozen=True)
class PodReport:
    """What one pod's agent said, or why it could not be asked."""

    name: str
    agent_status: Mapping[str, Any] | None = None
    error: str | None = None


def now_rfc3339() -> str:
    """The current time as Kubernetes writes timestamps."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Iterable[Mapping[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """``conditions`` with the one of ``type_`` replaced; its transition time moves only on a change."""
    result: list[dict[str, Any]] = []
    transition = now
    for condition in conditions:
        if condition.get("type") == type_:
            if condition.get("status") == status:
                transition = condition.get("lastTransitionTime") or now
        else:
            result.append(dict(condition))
    new: dict[str, Any] = {"type": type_, "status": status, "reason": reason, "message": message,
                           "lastTransitionTime": transition}
    if generation is not None:
        new["observedGeneration"] = generation
    result.append(new)
    return sorted(result, key=lambda c: c["type"])


def set_conditions(
    conditions: Iterable[Mapping[str, Any]],
    verdicts: Mapping[str, tuple[str, str, str]],
    *,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """``conditions`` with one per verdict (type → (status, reason, message)) set, the others kept."""
    result = [dict(c) for c in conditions]
    for type_, verdict in verdicts.items():
        result = set_condition(result, type_, *verdict, generation=generation, now=now)
    return result


def _steady(value: Any) -> Any:
    """``value`` without its ticking fields, nor nulls (a null and an absent field read the same)."""
    if isinstance(value, Mapping):
        return {k: _steady(v) for k, v in value.items() if k not in TICKING and v is not None}
    if isinstance(value, list):
        return [_steady(v) for v in value]
    return value


def changes(current: Mapping[str, Any], fields: Mapping[str, Any]) -> bool:
    """Whether writing ``fields`` into the status ``current`` changes more than ticking values."""
    return _steady(dict(fields)) != _steady({key: current.get(key) for key in fields})


def _hex(txid: Any) -> str | None:
    return f"{txid:016x}" if isinstance(txid, int) else None


def pod_entry(report: PodReport, database: str) -> dict[str, Any]:
    """One ``status.pods`` item: the agent's view of ``database`` in that pod (TXIDs in hex)."""
    entry: dict[str, Any] = {"name": report.name, "txid": None, "remoteTxid": None, "lagSeconds": None,
                             "lastSync": None, "error": report.error}
    if report.agent_status is None:
        return entry
    for db in report.agent_status.get("databases") or []:
        if db.get("path") == database:
            entry.update(txid=_hex(db.get("txid")), remoteTxid=_hex(db.get("remote_txid")),
                         lagSeconds=db.get("lag_seconds"), lastSync=db.get("last_sync"),
                         error=db.get("error"))
            # Only when the agent reports them (older agents do not).
            if "paused" in db:
                entry["paused"] = bool(db["paused"])
            if db.get("restart_required"):
                entry["restartRequired"] = [str(reason) for reason in db["restart_required"]]
            return entry
    entry["error"] = f"the agent does not replicate {database}"
    return entry


def readiness(entries: Sequence[Mapping[str, Any]], max_lag: float) -> tuple[str, str, str]:
    """(status, reason, message) of the Ready condition: every pod replicating within ``max_lag``."""
    if not entries:
        return "False", "NoPods", "no running pod carries this replica's label"
    failing = [e for e in entries if e.get("error")]
    if failing:
        return "False", "AgentError", "; ".join(f"{e['name']}: {e['error']}" for e in failing)
    unsynced = [e["name"] for e in entries if e.get("lagSeconds") is None]
    if unsynced:
        return "False", "NotSynced", f"no upload yet from {', '.join(unsynced)}"
    lagging = [e for e in entries if e["lagSeconds"] > max_lag]
    if lagging:
        worst = ", ".join(f"{e['name']} ({e['lagSeconds']:.1f}s)" for e in lagging)
        return "False", "Lagging", f"lag above {max_lag:g}s: {worst}"
    return "True", "Replicating", f"{len(entries)} pod(s) replicating within {max_lag:g}s"


def restore_verdict(pods: Iterable[Mapping[str, Any]]) -> tuple[str, str, str]:
    """(status, reason, message) of Restored: no labelled pod's restore init container has failed.

    A failed container is ``terminated`` with a non-zero code (pod ``restartPolicy: Never``) or, being
    retried, has that as its ``lastState``; a retry that succeeded is ``terminated`` with 0. The
    message is the error line: the last line of the termination message, which the kubelet fills
    from the log's tail (``terminationMessagePolicy: FallbackToLogsOnError``).
    """
    failures = []
    for pod in pods:
        for container in (pod.get("status") or {}).get("initContainerStatuses") or []:
            if container.get("name") != RESTORE_CONTAINER:
                continue
            state = container.get("state") or {}
            if "terminated" in state:
                ended = state["terminated"]
            else:  # waiting (back-off) or running (a retry): a failure is the last state
                ended = (container.get("lastState") or {}).get("terminated")
            if not ended or not ended.get("exitCode"):
                continue
            lines = [line for line in str(ended.get("message") or "").splitlines() if line.strip()]
            why = lines[-1].strip()[-MESSAGE_LIMIT:] if lines else ended.get("reason") or "no message"
            failures.append(f"pod {pod['metadata']['name']}: the restore init container exited "
                            f"{ended['exitCode']}: {why}")
    if failures:
        return "False", "RestoreFailed", "; ".join(failures)
    return "True", "NoFailure", "no pod's restore init container has failed"


def config_applied(entries: Sequence[Mapping[str, Any]]) -> tuple[str, str, str]:
    """(status, reason, message) of ConfigApplied: no agent says a reloaded change needs a restart."""
    pending = [e for e in entries if e.get("restartRequired")]
    if pending:
        detail = "; ".join(f"{e['name']}: {', '.join(e['restartRequired'])}" for e in pending)
        return ("False", "RestartRequired",
                f"the agents reloaded the config but need a restart to apply: {detail} "
                "(restart the pods, e.g. kubectl rollout restart)")
    return "True", "Applied", "every reporting agent runs the current config"


def summarize(reports: Iterable[PodReport], *, database: str) -> dict[str, Any]:
    """The status fields gathered from the agents: ``pods``, ``txid`` (the highest replicated) and
    ``lagSeconds`` (the worst)."""
    entries = [pod_entry(report, database) for report in sorted(reports, key=lambda r: r.name)]
    remote = [e["remoteTxid"] for e in entries if e["remoteTxid"] is not None]
    lags = [e["lagSeconds"] for e in entries if e["lagSeconds"] is not None]
    return {
        "pods": entries,
        "txid": max(remote) if remote else None,  # fixed-width hex: string order is numeric order
        "lagSeconds": max(lags) if lags else None,
        # True when every agent that answered says it is paused.
        "paused": bool(reporting := [e for e in entries if "paused" in e]) and all(e["paused"] for e in reporting),
    }


async def fetch_agent_status(
    session: aiohttp.ClientSession, pod_name: str, pod_ip: str, port: int, *, time_limit: float = 5.0
) -> PodReport:
    """Ask one agent for its ``/status``; a failure becomes the report's error, never an exception."""
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    try:
        async with session.get(f"http://{host}:{port}/status",
                               timeout=aiohttp.ClientTimeout(total=time_limit)) as response:
            response.raise_for_status()
            return PodReport(pod_name, agent_status=await response.json(content_type=None))
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return PodReport(pod_name, error=f"agent unreachable: {type(exc).__name__}: {exc}".rstrip(": "))


async def collect(
    pods: Iterable[Mapping[str, Any]], port: int, *, time_limit: float = 5.0
) -> list[PodReport]:
    """Fetch every running pod's agent status concurrently."""
    async with aiohttp.ClientSession() as session:
        fetches = [fetch_agent_status(session, p["metadata"]["name"], p["status"]["podIP"], port,
                                      time_limit=time_limit) for p in pods]
        return list(await asyncio.gather(*fetches))
