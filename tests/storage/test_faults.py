"""Transient failures: the retry policy, and S3 uploads through a proxy that keeps failing requests
(the `faulty_s3` fixture: `faults.FlakyProxy` in front of moto)."""

from __future__ import annotations

import asyncio
import io
import struct
import subprocess
import sys
from typing import Any

import pytest
from faults import FlakyProxy
from lifeboat.agent.storage import NotFound, Transient, new_client
from lifeboat.agent.storage.retry import retry
from replica_helpers import BUCKET


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


def ltx(seed: int, size: int) -> bytes:
    head = bytearray(100)
    head[:4] = b"LTX1"
    struct.pack_into(">q", head, 32, 1_700_000_000_000 + seed)
    return bytes(head) + bytes([seed]) * (size - 100)


async def test_s3_uploads_complete_through_faults(faulty_s3: FlakyProxy) -> None:
    client = new_client(
        {
            "url": f"s3://{BUCKET}/faults-{id(faulty_s3)}?endpoint={faulty_s3.endpoint}&region=us-east-1",
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
    assert faulty_s3.faults >= 10, (faulty_s3.requests, faulty_s3.injected)


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
