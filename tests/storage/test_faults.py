"""Transient failures: the retry policy, and S3 uploads through a proxy that keeps failing requests."""

from __future__ import annotations

import asyncio
import http.client
import io
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import BUCKET, PORTS, SFTPServer
from lifeboat.agent.storage import NotFound, Transient, new_client
from lifeboat.agent.storage.retry import retry


async def test_retry_retries_transient_errors_only(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def no_sleep(delay: float) -> None:
        waits.append(delay)

    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise Transient("503")
        return "ok"

    assert await retry(flaky, attempts=5, base=0.1, cap=0.25) == "ok"
    assert calls == 4 and len(waits) == 3
    assert all(0 <= w <= c for w, c in zip(waits, [0.1, 0.2, 0.25], strict=True))

    calls = 0
    with pytest.raises(Transient):
        await retry(flaky, attempts=2)
    assert calls == 2

    async def missing() -> None:
        nonlocal calls
        calls += 1
        raise NotFound("gone")

    calls = 0
    with pytest.raises(NotFound):
        await retry(missing, attempts=5)
    assert calls == 1


class FaultyProxy(ThreadingHTTPServer):
    """Forwards HTTP to moto, but every third request gets a 503 or a dropped connection."""

    daemon_threads = True

    def __init__(self, upstream_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream_port = upstream_port
        self.requests = 0
        self.failures = 0
        self.lock = threading.Lock()

    def next_fault(self) -> str | None:
        with self.lock:
            self.requests += 1
            if self.requests % 3:
                return None
            self.failures += 1
            return "503" if self.failures % 2 else "reset"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultyProxy

    def log_message(self, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = self.server.next_fault()
        if fault == "reset":
            # SO_LINGER 0: the client sees a connection reset, not a clean close.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if fault == "503":
            payload = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("expect", "connection")}
        upstream.request(self.command, self.path, body=body, headers=headers)
        resp = upstream.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


@pytest.fixture
def proxy(servers: SFTPServer) -> Iterator[FaultyProxy]:
    server = FaultyProxy(PORTS["s3"])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def ltx(seed: int, size: int) -> bytes:
    head = bytearray(100)
    head[:4] = b"LTX1"
    struct.pack_into(">q", head, 32, 1_700_000_000_000 + seed)
    return bytes(head) + bytes([seed]) * (size - 100)


async def test_s3_uploads_complete_through_faults(proxy: FaultyProxy) -> None:
    endpoint = f"http://127.0.0.1:{proxy.server_address[1]}"
    client = new_client(
        {
            "url": f"s3://{BUCKET}/faults-{id(proxy)}?endpoint={endpoint}&region=us-east-1",
            "access-key-id": "test",
            "secret-access-key": "test",
            "part-size": "5MiB",
        }
    )
    # Small files go up in one PutObject, the 12 MB ones in three parts each.
    blobs = {n: ltx(n, 12 << 20 if n % 4 == 0 else 50_000) for n in range(1, 13)}

    async def upload(n: int) -> None:
        src = io.BytesIO(blobs[n])

        async def once() -> Any:
            src.seek(0)
            return await client.write_ltx_file(0, n, n, src)

        await retry(once, attempts=8, base=0.05, cap=0.5)

    async def download(n: int) -> bytes:
        async def once() -> bytes:
            return b"".join([c async for c in client.open_ltx_file(0, n, n)])

        return await retry(once, attempts=8, base=0.05, cap=0.5)

    try:
        await retry(client.init, attempts=8, base=0.05)
        for n in blobs:
            await upload(n)
        files = await retry(lambda: client.ltx_files(0), attempts=8, base=0.05)
        assert [(f.min_txid, f.size) for f in files] == [(n, len(b)) for n, b in blobs.items()]
        for n, blob in blobs.items():
            assert await download(n) == blob
    finally:
        await client.close()
    assert proxy.failures >= 10, (proxy.requests, proxy.failures)


def test_importing_storage_loads_no_sdk() -> None:
    code = (
        "import sys, asyncio\n"
        "from lifeboat.agent.storage import new_client\n"
        "c = new_client({'url': 'file:///tmp/lifeboat-import-check'})\n"
        "import lifeboat.agent.storage.retry, lifeboat.agent.lease\n"
        "for mod in ('s3', 'gcs', 'abs', 'sftp', 'nats'):\n"
        "    __import__('lifeboat.agent.storage.' + mod)\n"
        "sdks = ('boto3', 'botocore', 'google.cloud', 'azure', 'paramiko', 'nats')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in sdks or m.startswith('google.cloud')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
