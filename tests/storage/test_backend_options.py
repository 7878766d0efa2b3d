"""Backend keys that change requests, against the real servers: S3 `require-content-md5` and
`sign-payload` (moto), SFTP `concurrent-writes` (sshd)."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lifeboat.agent import ltx
from lifeboat.agent.storage import FileInfo, new_client
from replica_helpers import BUCKET, S3_ENDPOINT, SFTPServer, replica_block


def _ltx(txid: int) -> bytes:
    buf = io.BytesIO()
    header = ltx.Header(page_size=4096, commit=1, min_txid=txid, max_txid=txid, timestamp=1)
    ltx.encode(header, [(1, b"\x07" * 4096)], buf)
    return buf.getvalue()


def _s3(**extra: Any) -> Any:
    return new_client(
        {
            "url": f"s3://{BUCKET}/opts-{uuid.uuid4().hex}",
            "endpoint": S3_ENDPOINT,
            "region": "us-east-1",
            "access-key-id": "test",
            "secret-access-key": "test",
            **extra,
        }
    )


@pytest.mark.parametrize(("setting", "md5_sent"), [(None, True), (True, True), (False, False)])
async def test_s3_require_content_md5(servers: SFTPServer, setting: bool | None, md5_sent: bool) -> None:
    client = _s3(**({} if setting is None else {"require-content-md5": setting}))
    headers: list[dict[str, Any]] = []
    client.s3.meta.events.register(
        "before-send.s3.DeleteObjects", lambda request, **_: headers.append(dict(request.headers))
    )
    await client.init()
    await client.write_ltx_file(0, 1, 1, io.BytesIO(_ltx(1)))
    await client.delete_ltx_files([FileInfo(0, 1, 1, 0, datetime.now(UTC))])
    assert await client.ltx_files(0) == []
    (sent,) = headers
    assert ("Content-MD5" in sent) is md5_sent
    await client.close()


@pytest.mark.parametrize("setting", [True, False])
async def test_s3_sign_payload_reaches_the_signer(servers: SFTPServer, setting: bool) -> None:
    client = _s3(**{"sign-payload": setting})
    assert client.s3.meta.config.s3["payload_signing_enabled"] is setting
    await client.init()
    await client.write_ltx_file(0, 1, 1, io.BytesIO(_ltx(1)))
    assert [f.name for f in await client.ltx_files(0)] == ["0000000000000001-0000000000000001.ltx"]
    await client.close()


@pytest.mark.parametrize("setting", [True, False])
async def test_sftp_concurrent_writes(servers: SFTPServer, tmp_path: Path, setting: bool) -> None:
    block = replica_block("sftp", f"opts-{uuid.uuid4().hex}", servers, tmp_path)
    client = new_client({**block, "concurrent-writes": setting})
    assert client.concurrent_writes is setting
    await client.init()
    data = _ltx(1)
    info = await client.write_ltx_file(0, 1, 1, io.BytesIO(data))
    assert info.size == len(data)
    got = b"".join([chunk async for chunk in client.open_ltx_file(0, 1, 1)])
    assert got == data
    await client.close()
