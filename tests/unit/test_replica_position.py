"""agent/replica.py: the replica's position is the newest TXID of ANY level.

After a volume loss the agent continues above that position; taking only L0 into account would let
it reuse TXIDs that a compaction or a snapshot already covers (a snapshot's sync writes an L0 file
that may not have been uploaded when the agent died).
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from lifeboat.agent import ltx
from lifeboat.agent.replica import Replica
from lifeboat.agent.storage import SNAPSHOT_LEVEL
from lifeboat.agent.storage.file import FileReplicaClient


async def _put(client: FileReplicaClient, level: int, min_txid: int, max_txid: int) -> None:
    buf = io.BytesIO()
    header = ltx.Header(page_size=512, commit=1, min_txid=min_txid, max_txid=max_txid, timestamp=1)
    ltx.encode(header, [(1, bytes(512))], buf)
    buf.seek(0)
    await client.write_ltx_file(level, min_txid, max_txid, buf)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ([(0, 1, 1), (0, 2, 2), (0, 3, 3)], 3),
        ([(0, 1, 1), (0, 2, 2), (1, 1, 7)], 7),  # a compacted level ends above L0
        ([(0, 4, 4), (2, 1, 3), (SNAPSHOT_LEVEL, 1, 5)], 5),  # the snapshot's own sync never shipped
        ([(1, 1, 4), (3, 1, 9)], 9),
        ([], 0),
    ],
)
async def test_remote_max_txid_is_the_max_over_every_level(
    tmp_path: Path, files: list[tuple[int, int, int]], expected: int
) -> None:
    client = FileReplicaClient(str(tmp_path / "replica"))
    await client.init()
    for level, lo, hi in files:
        await _put(client, level, lo, hi)
    db: Any = SimpleNamespace(path=str(tmp_path / "app.db"))
    replica = Replica(db, client)
    assert await replica.remote_max_txid() == expected
    await replica.init()
    assert replica.pos == expected
