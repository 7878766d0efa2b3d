"""A fault-injecting HTTP proxy in front of moto, shared by `tests/chaos` and `bench/soak.py`.

Modes (set with `FaultProxy.set_mode`, one at a time; `None` forwards everything):

- "5xx": 500 InternalError / 503 ServiceUnavailable, alternately
- "throttle": 503 with S3's `SlowDown` XML body
- "timeout": the request is read, then no answer for `hang` seconds (longer than the client's read
  timeout), then the connection is closed
- "reset": the connection is reset (RST, SO_LINGER 0) without an answer
- "slow": each response is delayed by `delay` seconds, then forwarded intact

In a fault mode, `every`-th request is hit (1: all of them); the others are forwarded to moto.
"""

from __future__ import annotations

import http.client
import select
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MOTO_PORT = 18001
MOTO_ENDPOINT = f"http://127.0.0.1:{MOTO_PORT}"
BUCKET = "lifeboat-test"
MODES = ("5xx", "throttle", "timeout", "reset", "slow")
_REPO = Path(__file__).resolve().parents[2]


def ensure_moto() -> None:
    """moto listening on its CI port (started by `.ci/services.sh` if needed) with the test bucket."""
    import boto3

    with socket.socket() as s:
        s.settimeout(0.5)
        up = s.connect_ex(("127.0.0.1", MOTO_PORT)) == 0
    if not up:
        subprocess.run(["bash", str(_REPO / ".ci" / "services.sh")], check=True, capture_output=True, timeout=600)
    s3 = boto3.client(
        "s3",
        endpoint_url=MOTO_ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    s3.create_bucket(Bucket=BUCKET)


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
        assert mode is None or mode in MODES, mode
        with self._lock:
            self.mode, self.every, self._n = mode, max(1, every), 0

    def next_fault(self) -> str | None:
        with self._lock:
            self.requests += 1
            if self.mode is None:
                return None
            self._n += 1
            if self._n % self.every:
                return None
            fault = self.mode
            if fault == "5xx":
                fault = "500" if self.injected["5xx"] % 2 == 0 else "503"
            self.injected[self.mode] += 1
            return fault

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
        if self.command != "HEAD":
            self.wfile.write(data)
        return None

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward
