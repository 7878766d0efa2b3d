"""What ``status`` shows of a SQLiteReplica: a summary per replica (pure), as a table or as JSON."""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

COLUMNS = ("NAME", "DATABASE", "READY", "PAUSED", "LAG", "TXID", "PODS", "LAST RESTORE", "LAST VERIFICATION")
NONE = "-"


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def last_restore(replica: str, restores: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The newest SQLiteRestore of ``replica`` (by creation time): its name, phase, when and message."""
    mine = [r for r in restores if (r.get("spec") or {}).get("replica") == replica]
    if not mine:
        return None
    newest = max(mine, key=lambda r: (r["metadata"].get("creationTimestamp") or "", r["metadata"]["name"]))
    status = newest.get("status") or {}
    return {"name": newest["metadata"]["name"], "phase": status.get("phase"),
            "time": status.get("completionTime") or status.get("startTime")
            or newest["metadata"].get("creationTimestamp"),
            "txid": (status.get("result") or {}).get("txid"), "message": status.get("message")}


def summary(replica: Mapping[str, Any], restores: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One replica's status as plain values (what ``-o json`` prints, and the table's source)."""
    spec, status = replica.get("spec") or {}, replica.get("status") or {}
    ready = _condition(status, "Ready")
    pods = status.get("pods") or []
    return {
        "name": replica["metadata"]["name"],
        "namespace": replica["metadata"].get("namespace"),
        "database": spec.get("database"),
        "ready": ready.get("status"),
        "readyReason": ready.get("reason"),
        "readyMessage": ready.get("message"),
        "paused": bool(spec.get("paused")),
        "lagSeconds": status.get("lagSeconds"),
        "txid": status.get("txid"),
        "pods": [{"name": p.get("name"), "txid": p.get("txid"), "lagSeconds": p.get("lagSeconds"),
                  "error": p.get("error")} for p in pods],
        "lastRestore": last_restore(replica["metadata"]["name"], restores),
        "lastVerification": status.get("lastVerification"),
    }


def _cells(row: Mapping[str, Any]) -> list[str]:
    ready = row["ready"] or "Unknown"
    if ready != "True" and row["readyReason"]:
        ready = f"{ready} ({row['readyReason']})"
    lag = row["lagSeconds"]
    healthy = sum(1 for p in row["pods"] if not p["error"])
    restore = row["lastRestore"]
    verification = row["lastVerification"]
    return [
        row["name"],
        row["database"] or NONE,
        ready,
        "yes" if row["paused"] else "no",
        f"{lag:.1f}s" if isinstance(lag, int | float) else NONE,
        row["txid"] or NONE,
        f"{healthy}/{len(row['pods'])}",
        f"{restore['phase'] or 'Pending'} {restore['time'] or ''}".strip() if restore else NONE,
        f"{verification.get('result') or 'unknown'} {verification.get('time') or ''}".strip()
        if verification else NONE,
    ]


def render(rows: Sequence[Mapping[str, Any]]) -> str:
    """A kubectl-style table: upper-case headers, columns three spaces apart, no trailing blanks."""
    grid = [list(COLUMNS), *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in grid) for i in range(len(COLUMNS))]
    return "\n".join("   ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in grid)
