"""Frames the wal-index does not publish.

A writer killed between writing its frames and updating the wal-index leaves frames whose
checksums chain correctly and whose last one carries a commit size, yet SQLite treats the
transaction as never having happened and the next writer overwrites it. The agent must follow the
wal-index, not the checksums alone, or it ships a phantom. It must also notice such frames (a
writer mid-commit looks the same for a moment) so that it looks again before the next event.
"""

from __future__ import annotations

import asyncio
import sqlite3
import struct
from pathlib import Path

from lifeboat.agent import sqlite as sq
from lifeboat.agent.db import Database
from lifeboat.agent.restore import restore
from lifeboat.agent.storage.file import FileReplicaClient


def append_phantom_commit(db_path: Path) -> bytes:
    """Append one well-formed commit frame for page 2 to the WAL, bypassing the wal-index."""
    wal = Path(f"{db_path}-wal")
    data = wal.read_bytes()
    hdr = sq.parse_wal_header(data)
    assert hdr is not None
    frames = sq.scan_frames(data[sq.WAL_HEADER_SIZE :], sq.WAL_HEADER_SIZE, hdr, hdr.checksum)
    last = frames[-1]
    page = b"\xee" * hdr.page_size
    commit = max(f.commit for f in frames if f.commit)
    head8 = struct.pack(">II", 2, commit)
    checksum = sq.wal_checksum(head8 + page, hdr.big_endian, last.checksum)
    frame = head8 + struct.pack(">IIII", hdr.salt1, hdr.salt2, *checksum) + page
    with open(wal, "r+b") as f:
        f.seek(last.offset + hdr.frame_size)
        f.write(frame)
    return page


def app_and_agent(db_path: Path) -> tuple[sqlite3.Connection, Database]:
    """The application's connection (WAL mode, table `t`) and the agent's Database, synced once."""
    app = sqlite3.connect(db_path, isolation_level=None)
    app.execute("PRAGMA journal_mode = wal")
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    app.execute("INSERT INTO t (v) VALUES ('committed')")
    db = Database(str(db_path))
    db.open()
    db.sync()
    return app, db


def test_agent_never_ships_a_commit_sqlite_did_not_publish(tmp_path: Path) -> None:
    db_path = tmp_path / "app.db"
    app, db = app_and_agent(db_path)
    try:
        synced = db.pos
        assert db.sync().unpublished is False
        phantom = append_phantom_commit(db_path)
        held = db.sync()
        assert held.txids == [], "a frame missing from the wal-index was shipped"
        assert held.unpublished, "frames past the wal-index must make the agent look again"
        assert db.pos == synced
        # SQLite agrees the phantom never happened: the next writer overwrites it.
        app.execute("INSERT INTO t (v) VALUES ('after')")
        after = db.sync()
        assert after.txids == [synced + 1] and after.unpublished is False
        for txid in db.local_l0_txids():
            assert phantom not in db.l0_path(txid).read_bytes()
    finally:
        db.close()

    replica = FileReplicaClient(str(tmp_path / "replica"))

    async def ship_and_restore() -> None:
        for txid in db.local_l0_txids():
            with open(db.l0_path(txid), "rb") as f:
                await replica.write_ltx_file(0, txid, txid, f)
        await restore(replica, str(tmp_path / "restored.db"), integrity_check="full")

    asyncio.run(ship_and_restore())
    restored = sqlite3.connect(tmp_path / "restored.db")
    assert restored.execute("SELECT v FROM t ORDER BY id").fetchall() == [("committed",), ("after",)]
    assert app.execute("SELECT v FROM t ORDER BY id").fetchall() == [("committed",), ("after",)]
    restored.close()
    app.close()


def test_a_transaction_spilling_into_the_wal_is_unpublished_until_it_commits(tmp_path: Path) -> None:
    app, db = app_and_agent(tmp_path / "app.db")
    try:
        synced = db.pos
        app.execute("PRAGMA cache_size = 10")  # a tiny page cache makes SQLite spill before COMMIT
        app.execute("BEGIN")
        app.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200) "
                    "INSERT INTO t (v) SELECT randomblob(3000) FROM n")
        spilled = db.sync()
        assert spilled.txids == [] and spilled.unpublished
        app.execute("COMMIT")
        done = db.sync()
        assert done.txids == [synced + 1] and not done.unpublished
    finally:
        db.close()
        app.close()
