"""A fault-injecting HTTP proxy in front of moto, shared by `tests/storage`, `tests/chaos` and
`bench/soak.py`.

Modes (set with `FaultProxy.set_mode`, one at a time; `None` forwards everything):

- "5xx": 500 InternalError / 503 ServiceUnavailable, alternately
- "throttle": 503 with S3's `SlowDown` XML body
- "timeout": the request is read, then no answer for `hang` seconds (longer than the client's read
  timeout), then the connection is closed
- "reset": the connection is reset (RST, SO_LINGER 0) without an answer
- "slow": each response is delayed by `delay` seconds, then forwarded intact
- "cut": the first and then every `every`-th response body larger than `cut_over` bytes is sent with its full
  Content-Length, but the connection breaks halfway through it (a download broken mid-body);
  smaller ones pass. `ranges` records the Range header of every GET. Not in `MODES`: the write
  workloads cycle those.

In a fault mode, `every`-th request is hit (1: all of them); the others are forwarded to moto.
`FlakyProxy` has no modes: every third request fails, alternately throttled and reset.
"""

from __future__ import annotations

import http.client
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from replica_helpers import BUCKET, PORTS, S3_ENDPOINT, listening, s3_client

MOTO_PORT = PORTS["s3"]
MOTO_ENDPOINT = S3_ENDPOINT
MODES = ("5xx", "throttle", "timeout", "reset", "slow")
READ_MODES = ("cut",)
_REPO = Path(__file__).resolve().parents[2]


def ensure_moto() -> None:
    """moto listening on its CI port (started by `.ci/services.sh` if needed) with the test bucket."""
    if not listening(MOTO_PORT):
        subprocess.run(["bash", str(_REPO / ".ci" / "services.sh")], check=True, capture_output=True, timeout=600)
    s3_client(MOTO_ENDPOINT).create_bucket(Bucket=BUCKET)


def _error_xml(code: str) -> bytes:
    return f"<Error><Code>{code}</Code><Message>injected by the fault proxy</Message></Error>".encode()


class FaultProxy(ThreadingHTTPServer):
    """Forwards HTTP to moto, injecting the current mode's fault into every `every`-th request."""

    daemon_threads = True

    def __init__(self, upstream_port: int = MOTO_PORT, *, hang: float = 3.0, delay: float = 0.4) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream_port = upstream_port
        self.hang = hang
        self.delay = delay
        self.cut_over = 64 << 10
        self.ranges: list[str | None] = []
        self.mode: str | None = None
        self.every = 2
        self.requests = 0
        self.injected: Counter[str] = Counter()
        self.abandoned = 0  # "timeout" requests the client gave up on before `hang` ran out
        self._lock = threading.Lock()
        self._n = 0
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def faults(self) -> int:
        return sum(self.injected.values())

    def set_mode(self, mode: str | None, every: int = 2) -> None:
        assert mode is None or mode in MODES + READ_MODES, mode
        with self._lock:
            self.mode, self.every, self._n = mode, max(1, every), 0

    def next_fault(self) -> str | None:
        with self._lock:
            self.requests += 1
            if self.mode in (None, "cut"):
                return self.mode  # "cut" counts in `cut_body`, among the bodies large enough
            self._n += 1
            if self._n % self.every:
                return None
            fault = self.mode
            if fault == "5xx":
                fault = "500" if self.injected["5xx"] % 2 == 0 else "503"
            self.injected[self.mode] += 1
            return fault

    def cut_body(self, size: int) -> bool:
        """In "cut" mode: whether this body of `size` bytes is to be cut."""
        with self._lock:
            if size <= self.cut_over:
                return False
            self._n += 1
            if (self._n - 1) % self.every:  # the first, then every `every`-th
                return False
            self.injected["cut"] += 1
            return True

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.set_mode(None)
        self.shutdown()
        self.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FlakyProxy(FaultProxy):
    """A FaultProxy that ignores modes: every third request fails, alternately with 503 SlowDown
    ("throttle") and a connection reset; the others are forwarded to moto."""

    def next_fault(self) -> str | None:
        with self._lock:
            self.requests += 1
            if self.requests % 3:
                return None
            fault = "throttle" if self.faults % 2 == 0 else "reset"
            self.injected[fault] += 1
            return fault


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _reset(self) -> None:
        # SO_LINGER 0: the client sees a connection reset, not a clean close.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = self.server.next_fault()
        if fault == "reset":
            return self._reset()
        if fault == "500":
            return self._reply(500, _error_xml("InternalError"))
        if fault == "503":
            return self._reply(503, _error_xml("ServiceUnavailable"))
        if fault == "throttle":
            return self._reply(503, _error_xml("SlowDown"))
        if fault == "timeout":
            # Hang; a client whose read timeout is shorter than `hang` closes the connection first.
            ready, _, _ = select.select([self.connection], [], [], self.server.hang)
            if ready:
                try:
                    closed = not self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    closed = True
                if closed:
                    with self.server._lock:
                        self.server.abandoned += 1
            return self._reset()
        if fault == "slow":
            time.sleep(self.server.delay)
        if self.command == "GET":
            with self.server._lock:
                self.server.ranges.append(self.headers.get("Range"))
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("expect", "connection")}
            upstream.request(self.command, self.path, body=body, headers=headers)
            resp = upstream.getresponse()
            data = resp.read()
        finally:
            upstream.close()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                self.send_header(k, v)
        length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length)
        self.end_headers()
        if fault == "cut" and self.command == "GET" and self.server.cut_body(len(data)):
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            # End of stream, then a reset once the client gave up: a reset alone may discard what
            # the client had received but not yet read, which would make the progress random.
            self.connection.shutdown(socket.SHUT_WR)
            select.select([self.connection], [], [], 10)
            return self._reset()
        if self.command != "HEAD":
            self.wfile.write(data)
        return None

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


# ---- a write workload through the proxy (the chaos test and `bench/soak.py --storage-faults`) -----

READ_TIMEOUT = 1.0  # the agent's S3 read timeout in the workload; hung requests hang HANG > this
HANG = 3.0


# The application: 10-row transactions every 30 ms until the stop file appears.
_WRITER = r"""
import os, sqlite3, sys, time
db, stop = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(db, timeout=30, isolation_level=None)
conn.execute("PRAGMA busy_timeout = 30000")
batch = 0
while not os.path.exists(stop):
    batch += 1
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO t (batch, v) VALUES (?, ?)", [(batch, os.urandom(150).hex()) for _ in range(10)])
    conn.execute("COMMIT")
    time.sleep(0.03)
conn.close()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent_status(port: int) -> dict[str, Any] | None:
    """The first database of an agent's `/status`, or None while its HTTP port is not answering or
    it is still opening its database (no positions yet)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
            db = json.loads(r.read())["databases"][0]
    except (OSError, ValueError):
        return None
    return None if db["remote_txid"] is None else db  # type: ignore[no-any-return]


def s3_config(path: Path, db: Path, port: int, endpoint: str, prefix: str) -> Path:
    path.write_text(
        f"""addr: 127.0.0.1:{port}
dbs:
  - path: {db}
    monitor-interval: 100ms
    replica:
      url: s3://{BUCKET}/{prefix}
      endpoint: {endpoint}
      region: us-east-1
      force-path-style: true
      sync-interval: 200ms
"""
    )
    return path


def run_fault_workload(root: Path, mode_seconds: float = 3.6, every: int = 2) -> dict[str, Any]:
    """`lifeboat replicate` through a FaultProxy cycling every mode for `mode_seconds` each under a
    continuous writer; then faults clear, the replica must catch up (`/status` remote_txid == txid),
    the agent stops on SIGTERM, and a restore read directly from moto is compared with the source.

    Raises AssertionError when the agent dies or does not catch up; otherwise returns what happened
    (`same` tells whether the restore equals the source). The caller sets AWS_* credentials and
    LIFEBOAT_S3_READ_TIMEOUT (READ_TIMEOUT) in the environment the agent inherits.
    """
    import uuid

    from helpers import Agent, create_db, integrity, lifeboat, rows

    ensure_moto()
    root.mkdir(parents=True, exist_ok=True)
    db = root / "app.db"
    create_db(db)
    prefix = f"faults-{uuid.uuid4().hex[:12]}"
    port = _free_port()
    seen: dict[str, int] = {}
    with FaultProxy(hang=HANG, delay=0.4) as proxy:
        cfg = s3_config(root / "proxied.yml", db, port, proxy.endpoint, prefix)
        with Agent.lifeboat("-config", str(cfg), log=root / "agent.log") as agent:
            deadline = time.monotonic() + 30
            while not ((st := agent_status(port)) and st["remote_txid"] >= 1):
                assert agent.alive() and time.monotonic() < deadline, f"no first upload:\n{agent.output()}"
                time.sleep(0.1)
            stop_file = root / "stop-writer"
            writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(db), str(stop_file)])
            try:
                for mode in MODES:
                    proxy.set_mode(mode, every=every)
                    before = agent_status(port) or {"remote_txid": 0}
                    until = time.monotonic() + mode_seconds
                    while time.monotonic() < until:
                        assert agent.alive(), f"replicate died in fault mode {mode}:\n{agent.output()[-4000:]}"
                        assert writer.poll() is None, "the application writer stopped"
                        time.sleep(0.2)
                    after = agent_status(port) or before
                    seen[mode] = after["remote_txid"] - before["remote_txid"]
            finally:
                proxy.set_mode(None)
                stop_file.touch()  # between transactions: a writer killed inside COMMIT is another test
            assert writer.wait(timeout=30) == 0
            # Faults cleared: the replica must catch up with everything captured.
            deadline = time.monotonic() + 30
            last = None
            while True:
                st = agent_status(port)
                pos = (st["txid"], st["remote_txid"]) if st else None
                if pos and pos[0] == pos[1] and pos == last:  # equal, and stable for one poll
                    break
                assert agent.alive() and time.monotonic() < deadline, f"no catch-up: {st}\n{agent.output()[-4000:]}"
                last = pos
                time.sleep(0.5)
            code = agent.stop(timeout=60)
            log = agent.output()
    direct = s3_config(root / "direct.yml", db, _free_port(), MOTO_ENDPOINT, prefix)
    out = root / "restored.db"
    restore = lifeboat("restore", "-o", str(out), "-config", str(direct), str(db), timeout=120)
    want = rows(db)
    got = rows(out) if restore.returncode == 0 else []
    check = integrity(out) if restore.returncode == 0 else f"restore failed: {restore.stderr[-1000:]}"
    return {
        "injected": dict(proxy.injected),
        "faults": proxy.faults,
        "abandoned": proxy.abandoned,
        "requests": proxy.requests,
        "uploads_per_mode": seen,
        "final": st,
        "exit_code": code,
        "log": log,
        "rows_committed": len(want),
        "rows_restored": len(got),
        "integrity": check,
        "same": check == "ok" and got == want,
        "lost": max(0, len(want) - len(got)),
        "restored": str(out),
    }
