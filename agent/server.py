"""The agent's HTTP port: `/metrics`, `/healthz`, `/readyz`, `/status` (replicate), and
`/metrics`, `/healthz`, `/readyz` (follow mode, `restore -f`).

A few read-only endpoints do not justify a web framework in every sidecar: this is a minimal
HTTP/1.1 responder on asyncio streams.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

if TYPE_CHECKING:
    from .follow import FollowState
    from .metrics import Metrics

# (status line, content type, body) for a request path.
Route = Callable[[str], tuple[str, str, bytes]]
_OK = ("200 OK", "text/plain", b"ok\n")
_NOT_FOUND = ("404 Not Found", "text/plain", b"not found\n")


class StatusSource(Protocol):
    def statuses(self) -> list[dict[str, Any]]: ...


def parse_addr(addr: str) -> tuple[str, int]:
    """`:9090`, `0.0.0.0:9090` or `[::1]:9090` -> (host, port); an empty host listens everywhere."""
    host, _, port = addr.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid addr {addr!r}: expected HOST:PORT or :PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def readiness(statuses: list[dict[str, Any]], max_age: float) -> tuple[bool, list[str]]:
    """Ready when every database has shipped all it captured, or uploaded within `max_age`."""
    problems = []
    for st in statuses:
        if st.get("error"):
            problems.append(f"{st['path']}: {st['error']}")
        elif st["remote_txid"] is None:
            problems.append(f"{st['path']}: starting")
        elif st["remote_txid"] == 0:
            problems.append(f"{st['path']}: nothing replicated yet")
        elif st["remote_txid"] < st["txid"] and (st["last_upload_age_seconds"] or max_age + 1) > max_age:
            problems.append(f"{st['path']}: replica behind for more than {max_age:g}s")
    return not problems, problems


async def _serve(addr: str, route: Route) -> asyncio.Server:
    """Answer GET requests on `addr` with `route(path)`; the caller closes the returned server."""
    host, port = parse_addr(addr)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 10)
            while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else "/"
            status, ctype, body = route(path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


async def serve(addr: str, source: StatusSource, metrics: Metrics, ready_max_age: float = 60.0) -> asyncio.Server:
    """Start serving the replicating agent's endpoints; the caller closes the returned server."""

    def route(path: str) -> tuple[str, str, bytes]:
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(metrics.registry)
        if path == "/healthz":
            return _OK
        if path == "/readyz":
            ok, problems = readiness(source.statuses(), ready_max_age)
            return (
                ("200 OK" if ok else "503 Service Unavailable"),
                "text/plain",
                ("ok\n" if ok else "\n".join(problems) + "\n").encode(),
            )
        if path == "/status":
            return "200 OK", "application/json", json.dumps({"databases": source.statuses()}).encode()
        return _NOT_FOUND

    return await _serve(addr, route)


def follow_registry(state: FollowState, db: str) -> CollectorRegistry:
    """Follow mode's metrics, read from `state` at each scrape."""
    registry = CollectorRegistry()
    lag = Gauge("lifeboat_follow_lag_seconds",
                "Follow lag: the newest applied file's delay from the replica to this database, or the age "
                "of the oldest listed file not applied yet, whichever is larger", ["db"], registry=registry)
    lag.labels(db).set_function(state.lag_seconds)
    txid = Gauge("lifeboat_follow_txid", "The last TXID applied to this database", ["db"], registry=registry)
    txid.labels(db).set_function(lambda: state.txid)
    ready = Gauge("lifeboat_follow_ready", "1 once the first restore is done", ["db"], registry=registry)
    ready.labels(db).set_function(lambda: float(state.ready))
    return registry


async def serve_follow(addr: str, state: FollowState, db: str) -> asyncio.Server:
    """Start serving follow mode's endpoints for `db`; `/readyz` is 503 until the first restore is done."""
    registry = follow_registry(state, db)

    def route(path: str) -> tuple[str, str, bytes]:
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(registry)
        if path == "/healthz":
            return _OK
        if path == "/readyz":
            return _OK if state.ready else ("503 Service Unavailable", "text/plain", f"{db}: restoring\n".encode())
        return _NOT_FOUND

    return await _serve(addr, route)
