"""Opening a database commits Litestream's two tables in one transaction, and nothing when they
exist already: each commit is an fsync of the WAL, and a cold start opens a thousand databases."""

from __future__ import annotations

import struct
from pathlib import Path

from helpers import create_db, write_batch
from lifeboat.agent.db import Database

WAL_HEADER, FRAME_HEADER = 32, 24


def wal_commits(wal: Path) -> int:
    """Commit frames in the WAL (a frame whose header records the database size after it)."""
    data = wal.read_bytes() if wal.exists() else b""  # the last connection to close removes it
    if len(data) < WAL_HEADER:
        return 0
    page_size = struct.unpack(">I", data[8:12])[0]
    commits, off = 0, WAL_HEADER
    while off + FRAME_HEADER + page_size <= len(data):
        if struct.unpack(">I", data[off + 4 : off + 8])[0]:
            commits += 1
        off += FRAME_HEADER + page_size
    return commits


def test_open_commits_the_tables_once(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    create_db(path)
    write_batch(path, 1, rows=2)
    wal = Path(f"{path}-wal")
    before = wal_commits(wal)
    db = Database(str(path))
    db.open()
    try:
        assert wal_commits(wal) - before == 1
        tables = {r[0] for r in db._rconn.execute("SELECT name FROM sqlite_master")}  # type: ignore[union-attr]
        assert {"_litestream_seq", "_litestream_lock"} <= tables
    finally:
        db.close()
    again = wal_commits(wal)
    db = Database(str(path))
    db.open()
    try:
        assert wal_commits(wal) <= again  # the tables are there: nothing committed
    finally:
        db.close()
