"""Every level of a replica listed at once: one request on the object stores whose layout allows it.

Opening a database learns the replica's position from every level. On S3 ten listings were ten
requests, each a few milliseconds of botocore CPU: most of an open's cost with hundreds of
databases on one agent. The listing of all levels must say what the ten listings said, on every
backend (those that cannot do better list level by level).
"""

from __future__ import annotations

import io
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from helpers import create_db, write_batch
from lifeboat.agent import ltx
from lifeboat.agent.metrics import Metrics
from lifeboat.agent.restore import list_levels
from lifeboat.agent.storage import SNAPSHOT_LEVEL, ltx_files_by_level, new_client
from lifeboat.agent.store import DatabaseRunner, DatabaseSpec
from replica_helpers import BUCKET, S3_ENDPOINT, SFTPServer

# (level, min, max) of a replica that compacted and snapshotted up to TXID 3, then shipped TXID 4.
FILES = [(0, 1, 1), (0, 2, 2), (0, 3, 3), (0, 4, 4), (1, 1, 3), (3, 1, 3), (SNAPSHOT_LEVEL, 1, 3)]


def _ltx(lo: int, hi: int) -> bytes:
    buf = io.BytesIO()
    header = ltx.Header(page_size=4096, commit=1, min_txid=lo, max_txid=hi, timestamp=1)
    ltx.encode(header, [(1, bytes([hi]) * 4096)], buf)
    return buf.getvalue()


async def _fill(client: Any) -> None:
    for level, lo, hi in FILES:
        await client.write_ltx_file(level, lo, hi, io.BytesIO(_ltx(lo, hi)))


async def test_all_levels_listed_as_each_level_lists_them(client: Any) -> None:
    await _fill(client)
    each = {level: await client.ltx_files(level) for level in range(SNAPSHOT_LEVEL + 1)}
    expected = {level: files for level, files in each.items() if files}
    assert await ltx_files_by_level(client) == expected
    assert await ltx_files_by_level(Metrics().instrument(client, "db")) == expected


async def _filled_s3_replica() -> tuple[Any, Counter[str]]:
    """An S3 client on a fresh replica holding FILES, and the count of its requests from now on,
    by operation."""
    path = f"levels-{uuid.uuid4().hex}"
    client = new_client({
        "url": f"s3://{BUCKET}/{path}", "endpoint": S3_ENDPOINT, "region": "us-east-1",
        # A key of its own: a botocore client of its own, whose requests only this test makes.
        "access-key-id": f"levels-{uuid.uuid4().hex}", "secret-access-key": "test",
    })
    await _fill(client)
    # Keys below the replica that are no level's files: a level's subdirectory, 0.3's generations.
    for key in ("0000/x/0000000000000009-0000000000000009.ltx", "generations/0000000000000001/snapshots/0.ltx"):
        client.s3.put_object(Bucket=BUCKET, Key=f"{path}/{key}", Body=_ltx(9, 9))
    requests: Counter[str] = Counter()

    def count(event_name: str, **_: Any) -> None:
        requests[event_name.rsplit(".", 1)[-1]] += 1

    client.s3.meta.events.register("before-send.s3", count)
    return client, requests


async def test_opening_a_database_lists_its_s3_replica_once(servers: SFTPServer, tmp_path: Path) -> None:
    client, requests = await _filled_s3_replica()
    db = tmp_path / "app.db"
    create_db(db)
    write_batch(db, 1, rows=2)
    runner = DatabaseRunner(DatabaseSpec(str(db), client))
    try:
        await runner.open()
    finally:
        await runner.lease.release()
        runner.db.close()
        await client.close()
    held = runner.replica.held_at_open
    assert held is not None and held.max_txids == {0: 4, 1: 3, 3: 3, SNAPSHOT_LEVEL: 3}
    assert runner.replica.pos == 4
    assert requests["ListObjectsV2"] == 1, requests


async def test_a_restore_lists_an_s3_replica_once(servers: SFTPServer) -> None:
    client, requests = await _filled_s3_replica()
    try:
        levels = await list_levels(client)
    finally:
        await client.close()
    assert {level: [(f.min_txid, f.max_txid) for f in files] for level, files in levels.items()} == {
        0: [(1, 1), (2, 2), (3, 3), (4, 4)], 1: [(1, 3)], 3: [(1, 3)], SNAPSHOT_LEVEL: [(1, 3)]
    }
    assert requests["ListObjectsV2"] == 1, requests
