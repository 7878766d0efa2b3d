"""S3 replicas share one SDK client per endpoint, credentials and client options (against moto): an
agent with a directory of databases on one bucket builds one client, not one per database."""

from __future__ import annotations

import io
import uuid
from typing import Any

from lifeboat.agent import ltx
from lifeboat.agent.storage import new_client
from replica_helpers import BUCKET, S3_ENDPOINT, SFTPServer


def _ltx(txid: int) -> bytes:
    buf = io.BytesIO()
    header = ltx.Header(page_size=4096, commit=1, min_txid=txid, max_txid=txid, timestamp=1)
    ltx.encode(header, [(1, b"\x07" * 4096)], buf)
    return buf.getvalue()


def _s3(**extra: Any) -> Any:
    settings = {"url": f"s3://{BUCKET}/shared-{uuid.uuid4().hex}", "endpoint": S3_ENDPOINT, "region": "us-east-1",
                "access-key-id": "test", "secret-access-key": "test"}
    return new_client({**settings, **extra})


async def test_replicas_of_one_endpoint_share_one_client(servers: SFTPServer) -> None:
    a, b = _s3(), _s3()
    others = [_s3(**{"access-key-id": "other"}), _s3(**{"force-path-style": False}), _s3(concurrency=80)]
    try:
        shared = a.s3
        assert b.s3 is shared
        assert len({id(o.s3) for o in others} | {id(shared)}) == 4
        await a.write_ltx_file(0, 1, 1, io.BytesIO(_ltx(1)))
        await a.close()
        # The other user keeps the client working after one lets it go.
        await b.write_ltx_file(0, 1, 1, io.BytesIO(_ltx(1)))
        assert [f.name for f in await b.ltx_files(0)] == ["0000000000000001-0000000000000001.ltx"]
    finally:
        await b.close()
        for o in others:
            await o.close()
    # The last user closed it: the next replica gets a new client.
    c = _s3()
    try:
        assert c.s3 is not shared
        await c.init()
    finally:
        await c.close()


async def test_concurrent_first_use_builds_one_client(servers: SFTPServer, monkeypatch: Any) -> None:
    """A restore (and `restore -f`) starts by listing the ten levels at once, each in a worker thread:
    each thread building its own client on first use made a follower peak at 212 MB."""
    import boto3.session
    from lifeboat.agent.restore import list_levels

    built = 0
    real_client = boto3.session.Session.client

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal built
        built += 1
        return real_client(self, *args, **kwargs)

    monkeypatch.setattr(boto3.session.Session, "client", counted)
    client = _s3(**{"access-key-id": f"first-use-{uuid.uuid4().hex}"})
    try:
        assert await list_levels(client) == {}
    finally:
        await client.close()
    assert built == 1
