"""The control socket: Litestream's HTTP-over-Unix-socket API, served by `replicate` and spoken by
the `sync`, `info`, `list`, `start`, `stop`, `register` and `unregister` commands.

Paths and JSON bodies are Litestream's, so its CLI (and any tool written against its socket) drives
a lifeboat agent and the other way round. Errors are `{"error": ..., "details": ...}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import os
import socket
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from .storage import ConfigError, StorageError, format_timestamp

if TYPE_CHECKING:
    from .store import DatabaseSpec, Store

log = logging.getLogger("lifeboat.control")
MAX_BODY = 1 << 20
DEFAULT_TIMEOUT = 30


class ControlError(Exception):
    """A request the agent refuses: an HTTP status and the `{error, details}` body."""

    def __init__(self, status: int, error: str, details: Any = None) -> None:
        super().__init__(error)
        self.status = status
        self.details = details


Handler = Callable[[dict[str, Any], dict[str, list[str]]], Awaitable[dict[str, Any]]]
SpecFactory = Callable[[str, str], "DatabaseSpec"]


class ControlServer:
    """Serves the control API for one store on a Unix socket."""

    def __init__(self, store: Store, make_spec: SpecFactory, version: str) -> None:
        self.store = store
        self.make_spec = make_spec
        self.version = version
        self.started_at = time.time()
        self.path: str | None = None
        self._server: asyncio.Server | None = None
        self._identity: tuple[int, int] | None = None
        self.routes: dict[tuple[str, str], Handler] = {
            ("POST", "/sync"): self.sync,
            ("POST", "/start"): self.start,
            ("POST", "/stop"): self.stop,
            ("POST", "/register"): self.register,
            ("POST", "/unregister"): self.unregister,
            ("GET", "/txid"): self.txid,
            ("GET", "/list"): self.list,
            ("GET", "/info"): self.info,
        }

    async def listen(self, path: str, permissions: int) -> None:
        """Bind the socket at `path` with `permissions` before anyone can connect to it.

        The socket is bound inside a fresh 0700 directory next to `path`, given its mode there, then
        renamed into place: there is no moment when it exists at `path` with a wider mode.
        """
        path = os.path.abspath(path)
        _remove_stale_socket(path)
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            raise ConfigError(f"socket.path {path}: directory {parent} does not exist")
        staging = tempfile.mkdtemp(prefix=".lifeboat-sock-", dir=parent)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            tmp = os.path.join(staging, "s")
            sock.bind(tmp)
            os.chmod(tmp, permissions)
            os.rename(tmp, path)
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(staging, "s"))
            os.rmdir(staging)
        st = os.stat(path)
        self.path, self._identity = path, (st.st_dev, st.st_ino)
        self.started_at = time.time()
        self._server = await asyncio.start_unix_server(self._handle, sock=sock)
        log.info("control socket listening on %s", path)

    async def close(self) -> None:
        """Stop serving and remove the socket file (only if it is still ours)."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._identity:
                    os.unlink(self.path)
            self.path = None

    # -- HTTP ---------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, payload = await self._respond(reader)
            body = (json.dumps(payload) + "\n").encode()
            reason = http.client.responses.get(status, "")
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
        request = (await asyncio.wait_for(reader.readline(), 10)).decode("latin-1").split()
        length = 0
        while (line := await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length" and value.strip().isdigit():
                length = int(value)
        if len(request) < 2:
            return 400, {"error": "malformed request"}
        if length > MAX_BODY:
            return 413, {"error": "request body too large"}
        raw = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
        method, (route, _, query) = request[0], request[1].partition("?")
        handler = self.routes.get((method, route))
        if handler is None:
            known = any(r == route for _, r in self.routes)
            return (405, {"error": "method not allowed"}) if known else (404, {"error": f"not found: {route}"})
        try:
            body = _json_body(raw) if method == "POST" else {}
            return 200, await handler(body, parse_qs(query))
        except ControlError as exc:
            return exc.status, _error(str(exc), exc.details)
        except Exception as exc:  # the agent keeps serving; the client gets the reason
            log.warning("control %s %s failed: %s", method, route, exc)
            return 500, _error(str(exc) or type(exc).__name__)

    # -- endpoints ----------------------------------------------------------------------------

    async def sync(self, body: dict[str, Any], _query: dict[str, list[str]]) -> dict[str, Any]:
        """`POST /sync {path, wait, timeout}`: capture now; with `wait`, until the replica has it."""
        from .store import DatabaseNotFound, DatabaseNotOpen

        path = _path(body)
        wait = bool(body.get("wait"))
        timeout = _timeout(body, DEFAULT_TIMEOUT if wait else 0)
        try:
            coro = self.store.sync_db(path, wait=wait, timeout=timeout or DEFAULT_TIMEOUT)
            result = await (asyncio.wait_for(coro, timeout) if timeout else coro)
        except DatabaseNotFound as exc:
            raise ControlError(404, str(exc)) from None
        except DatabaseNotOpen as exc:
            raise ControlError(409, str(exc)) from None
        except TimeoutError:
            raise ControlError(504, f"sync of {path} did not complete within {timeout}s") from None
        status = "no_change" if not result.changed else "synced" if wait else "synced_local"
        return {"status": status, "path": path, "txid": result.txid, "replicated_txid": result.replicated_txid}

    async def start(self, body: dict[str, Any], _query: dict[str, list[str]]) -> dict[str, Any]:
        """`POST /start {path, timeout}`: replicate a stopped database again."""
        path = _path(body)
        self._runner(path)
        timeout = _timeout(body, 0)
        coro = self.store.start_db(path)
        started = await (asyncio.wait_for(coro, timeout) if timeout else coro)
        return {"status": "started" if started else "already_running", "path": path, "txid": self._txid(path)}

    async def stop(self, body: dict[str, Any], _query: dict[str, list[str]]) -> dict[str, Any]:
        """`POST /stop {path, timeout}`: final sync, then stop replicating (the database stays registered)."""
        path = _path(body)
        self._runner(path)
        stopped = await self.store.stop_db(path, _timeout(body, DEFAULT_TIMEOUT))
        return {"status": "stopped" if stopped else "already_stopped", "path": path, "txid": self._txid(path)}

    async def register(self, body: dict[str, Any], _query: dict[str, list[str]]) -> dict[str, Any]:
        """`POST /register {path, replica_url}`: open and replicate one more database."""
        path = _path(body)
        url = body.get("replica_url")
        if not isinstance(url, str) or not url:
            raise ControlError(400, "replica_url required")
        if self.store.find(path) is not None:
            return {"status": "already_registered", "path": path}
        try:
            spec = self.make_spec(path, url)
        except (ConfigError, StorageError, ValueError) as exc:
            raise ControlError(400, f"invalid replica url: {exc}") from None
        try:
            await self.store.add(spec)
        except Exception as exc:
            raise ControlError(500, f"failed to register database: {exc}") from None
        log.info("registered %s, replicating to %s", path, url)
        return {"status": "registered", "path": path}

    async def unregister(self, body: dict[str, Any], _query: dict[str, list[str]]) -> dict[str, Any]:
        """`POST /unregister {path, timeout}`: final sync, then forget the database."""
        path = _path(body)
        runner = await self.store.remove(path, _timeout(body, DEFAULT_TIMEOUT) or DEFAULT_TIMEOUT)
        if runner is None:
            return {"status": "already_unregistered", "path": path, "txid": 0}
        log.info("unregistered %s", path)
        return {"status": "unregistered", "path": path, "txid": runner.db.pos}

    async def txid(self, _body: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        """`GET /txid?path=`: the database's current TXID."""
        path = _path({"path": (query.get("path") or [""])[0]})
        return {"txid": self._runner(path, status=404).db.pos}

    async def list(self, _body: dict[str, Any], _query: dict[str, list[str]]) -> dict[str, Any]:
        """`GET /list`: every database, its state and its last successful upload."""
        out = []
        for r in self.store.runners:
            running = self.store.is_running(r.db.path)
            entry: dict[str, Any] = {
                "path": r.db.path,
                # Litestream's words: "open" is a database followed while its replica does not ship.
                "status": "stopped" if not running else "open" if r.paused else "replicating",
            }
            if r.replica.stats.last_upload is not None:
                entry["last_sync_at"] = _rfc3339(r.replica.stats.last_upload)
            out.append(entry)
        return {"databases": out}

    async def info(self, _body: dict[str, Any], _query: dict[str, list[str]]) -> dict[str, Any]:
        """`GET /info`: version, pid, uptime and number of databases."""
        return {
            "version": self.version,
            "pid": os.getpid(),
            "uptime_seconds": int(time.time() - self.started_at),
            "started_at": _rfc3339(self.started_at),
            "database_count": len(self.store.runners),
        }

    def _runner(self, path: str, status: int = 404) -> Any:
        runner = self.store.find(path)
        if runner is None:
            raise ControlError(status, f"database not found: {path}")
        return runner

    def _txid(self, path: str) -> int:
        return int(self._runner(path).db.pos)


def _remove_stale_socket(path: str) -> None:
    """A socket left by a previous run is replaced; anything else at the path is an error."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"socket.path {path}: exists and is not a socket")
    os.unlink(path)


def _json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:
        raise ControlError(400, "invalid request body", str(exc)) from None
    if not isinstance(body, dict):
        raise ControlError(400, "invalid request body", "expected a JSON object")
    return body


def _path(body: dict[str, Any]) -> str:
    path = body.get("path")
    if not isinstance(path, str) or not path:
        raise ControlError(400, "path required")
    return os.path.abspath(os.path.expanduser(path))


def _timeout(body: dict[str, Any], default: int) -> int:
    value = body.get("timeout") or default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ControlError(400, "invalid request body", "timeout must be a non-negative number of seconds")
    return value


def _error(message: str, details: Any = None) -> dict[str, Any]:
    return {"error": message} if details is None else {"error": message, "details": details}


def _rfc3339(ts: float) -> str:
    return format_timestamp(datetime.fromtimestamp(ts, UTC))


# -- client -----------------------------------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class ClientError(Exception):
    """The agent could not be reached, or refused the request (its `error` as the message)."""


def request(socket_path: str, method: str, route: str, body: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
    """One request to an agent's control socket; its JSON answer, or `ClientError`."""
    conn = _UnixConnection(socket_path, timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            conn.request(method, route, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise ClientError(f"cannot connect to control socket {socket_path}: {reason}") from None
    finally:
        conn.close()
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    if resp.status != 200:
        message = payload.get("error") if isinstance(payload, dict) else None
        raise ClientError(message or raw.decode("utf-8", "replace").strip() or f"HTTP {resp.status}")
    if not isinstance(payload, dict):
        raise ClientError(f"unexpected answer from {socket_path}: {raw[:200]!r}")
    return payload
