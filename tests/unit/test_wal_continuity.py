"""WAL continuity in `Database`: a foreign checkpoint or WAL restart injected at the moments the
agent's read pin could lapse (between a scan and the page reads, around our own checkpoint) never
makes the L0 files differ from the database; and what was proven is one explicit value."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lifeboat.agent import ltx
from lifeboat.agent.continuity import FromFile, Resume, SnapshotRequired
from lifeboat.agent.db import Database
from lifeboat.agent.sqlite import lock_pgno


def _app(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    return conn


def _rows(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """Both tables: a frame lost from one is not hidden by a later frame of the same page."""
    return [
        *conn.execute("SELECT 't', * FROM t ORDER BY id").fetchall(),
        *conn.execute("SELECT 'u', * FROM u ORDER BY id").fetchall(),
    ]


def _from_l0_files(db: Database, out: Path) -> list[tuple[Any, ...]]:
    """The database the local L0 files describe (all of them, from the first snapshot), and its rows."""
    files = [open(db.l0_path(t), "rb") for t in db.local_l0_txids()]
    try:
        decoders = [ltx.Decoder(f, f.name) for f in files]
        last = decoders[-1].header
        with open(out, "wb") as f:
            for pgno, data, _ in ltx.merge_pages(decoders, last.commit):
                f.seek((pgno - 1) * last.page_size)
                f.write(data)
            f.truncate(last.commit * last.page_size)
    finally:
        for f in files:
            f.close()
    assert last.commit < lock_pgno(last.page_size)
    conn = sqlite3.connect(f"file:{out}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return _rows(conn)
    finally:
        conn.close()


def _foreign_restart(path: Path) -> None:
    """Another connection writes, checkpoints with TRUNCATE (a WAL restart) and writes again, without
    waiting for any lock: whatever SQLite lets it do at this moment."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    conn.execute("PRAGMA busy_timeout = 0")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    for sql in (
        "INSERT INTO u (v) VALUES ('foreign before the restart')",
        "PRAGMA wal_checkpoint(TRUNCATE)",
        "INSERT INTO t (v) VALUES ('foreign after the restart')",
    ):
        with contextlib.suppress(sqlite3.OperationalError):
            conn.execute(sql).fetchall()
    conn.close()


def _inject(monkeypatch: pytest.MonkeyPatch, name: str, action: Callable[[], None], *, after: bool) -> list[int]:
    """Run `action` once per armed call of Database.<name>, before or after the real method."""
    real = getattr(Database, name)
    armed = [0]

    def wrapper(self: Database, *args: Any, **kwargs: Any) -> Any:
        fire = armed[0] > 0
        if fire:
            armed[0] -= 1
        if fire and not after:
            action()
        out = real(self, *args, **kwargs)
        if fire and after:
            action()
        return out

    monkeypatch.setattr(Database, name, wrapper)
    return armed


@pytest.mark.parametrize(
    ("method", "after"),
    [("_scan_wal", True), ("_begin_read", False), ("_end_read", True)],
    ids=["between-scan-and-read", "before-re-pin", "after-releasing-the-read"],
)
def test_foreign_restart_never_loses_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, after: bool
) -> None:
    path = tmp_path / "app.db"
    app = _app(path)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    app.execute("CREATE TABLE u (id INTEGER PRIMARY KEY, v TEXT)")
    app.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i}" * 20,) for i in range(200)])
    db = Database(str(path))
    db.open()
    try:
        db.sync()
        for round_ in range(3):
            app.execute("INSERT INTO t (v) VALUES (?)", (f"app {round_}",))
            # A reader at the newest snapshot: a checkpoint can copy every frame but nobody can
            # restart the WAL until it goes, which it does at the injected moment.
            reader = sqlite3.connect(path, isolation_level=None)
            reader.execute("BEGIN")
            reader.execute("SELECT COUNT(*) FROM t").fetchone()

            def action(reader: sqlite3.Connection = reader) -> None:
                if reader.in_transaction:
                    reader.execute("COMMIT")
                _foreign_restart(path)

            armed = _inject(monkeypatch, method, action, after=after)
            armed[0] = 1
            db.sync() if method == "_scan_wal" and round_ == 0 else db.checkpoint("PASSIVE")
            monkeypatch.undo()
            if reader.in_transaction:
                reader.execute("COMMIT")
            reader.close()
            app.execute("INSERT INTO t (v) VALUES (?)", (f"app after {round_}",))
            db.sync()
            assert _from_l0_files(db, tmp_path / f"from-l0-{round_}.db") == _rows(app)
    finally:
        db.close()
        app.close()


def test_continuity_state_is_one_value(tmp_path: Path) -> None:
    """What each step proved: nothing yet, a position in a generation, then the pinned database file."""
    path = tmp_path / "app.db"
    app = _app(path)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    app.execute("CREATE TABLE u (id INTEGER PRIMARY KEY, v TEXT)")
    db = Database(str(path))
    db.open()
    try:
        assert isinstance(db.state, SnapshotRequired)
        db.sync()
        assert isinstance(db.state, Resume)
        app.execute("INSERT INTO t (v) VALUES ('x')")
        db.checkpoint("PASSIVE")
        st = db.state
        assert isinstance(st, FromFile) and st.prior is not None
        app.execute("INSERT INTO t (v) VALUES ('y')")  # the application's write restarts the WAL
        db.sync()
        assert isinstance(db.state, Resume) and db.state.salts != st.prior.salts
        assert _from_l0_files(db, tmp_path / "from-l0.db") == _rows(app)
    finally:
        db.close()
        app.close()


def _setup(path: Path) -> Database:
    app = _app(path)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    app.execute("CREATE TABLE u (id INTEGER PRIMARY KEY, v TEXT)")
    app.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i}" * 20,) for i in range(300)])
    app.close()
    db = Database(str(path))
    db.open()
    db.sync()
    return db


def test_restart_after_the_wal_was_removed_continues(tmp_path: Path) -> None:
    """The agent is the last connection: SQLite removes the WAL on close, the next start proves the
    file against the checksum recorded at stop and writes incremental L0 files only."""
    path = tmp_path / "app.db"
    db = _setup(path)
    db.close()
    assert not Path(f"{path}-wal").exists()
    db = Database(str(path))
    db.open()
    try:
        assert isinstance(db.state, FromFile), db.state
        app = _app(path)
        app.execute("INSERT INTO u (v) VALUES ('after the restart')")
        result = db.sync()
        assert result.txids and not result.snapshot
        assert _from_l0_files(db, tmp_path / "from-l0.db") == _rows(app)
        app.close()
    finally:
        db.close()


@pytest.mark.parametrize("change", ["checkpointed-into-the-file", "copied-from-the-new-wal"])
def test_restart_after_the_file_changed_writes_a_snapshot(tmp_path: Path, change: str) -> None:
    """While the agent was stopped the application wrote and a checkpoint copied it into the file:
    the proof fails, and the next L0 file is a full snapshot (never an incremental on a wrong base)."""
    path = tmp_path / "app.db"
    db = _setup(path)
    db.close()
    app = _app(path)
    app.execute("INSERT INTO u (v) VALUES ('while the agent was stopped')")
    if change == "checkpointed-into-the-file":
        app.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    else:
        app.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # copied, the WAL kept: nBackfill > 0
    db = Database(str(path))
    db.open()
    try:
        assert isinstance(db.state, SnapshotRequired), db.state
        assert db.sync().snapshot
        assert _from_l0_files(db, tmp_path / "from-l0.db") == _rows(app)
    finally:
        db.close()
        app.close()


def test_snapshot_never_mixes_in_frames_copied_past_its_position(tmp_path: Path) -> None:
    """An L9 snapshot reads the pages no frame carries from the database file. If our read pin sits
    past our synced position (a start: the WAL grew while the agent was down) and the sync before the
    snapshot stopped early (the wal-index in flux), anyone's checkpoint may copy those later frames into
    the file while the snapshot reads it: the snapshot must then be read again, never mix states."""
    from lifeboat.agent.db import SyncResult

    path = tmp_path / "app.db"
    app = _app(path)
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    app.execute("CREATE TABLE u (id INTEGER PRIMARY KEY, v TEXT)")
    app.executemany("INSERT INTO u (v) VALUES (?)", [("u" * 300,)] * 200)
    app.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # u's pages now live in the database file only
    db = Database(str(path))
    db.open()
    db.sync()
    app.executemany("INSERT INTO t (v) VALUES (?)", [("t" * 300,)] * 50)
    db.sync()
    # The application then changes u's pages, and our read pin is renewed past our position.
    app.execute("UPDATE u SET v = 'changed'")
    db._end_read()
    db._begin_read()
    real_sync, calls = db._sync, [0]

    def sync_stopping_early() -> SyncResult:
        calls[0] += 1
        if calls[0] == 1:  # as when the wal-index is in flux: nothing synced this time...
            # ...and meanwhile the application's checkpoint copies every frame up to our pin.
            assert app.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[2] > 0
            return SyncResult()
        return real_sync()

    db._sync = sync_stopping_early  # type: ignore[method-assign]
    snap = tmp_path / "snap.ltx"
    with open(snap, "w+b") as out:
        header = db.snapshot_to(out)
    db.close()
    # The snapshot is exactly the state the L0 files describe at its TXID.
    assert header.max_txid == db.local_l0_txids()[-1]
    expected = _from_l0_files(db, tmp_path / "chain.db")
    with open(snap, "rb") as f, open(tmp_path / "snap.db", "wb") as o:
        for pgno, data in ltx.Decoder(f, str(snap)).pages():
            o.seek((pgno - 1) * header.page_size)
            o.write(data)
    conn = sqlite3.connect(f"file:{tmp_path / 'snap.db'}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert _rows(conn) == expected
    finally:
        conn.close()
