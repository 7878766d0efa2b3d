"""Frames the wal-index publishes as committed are taken as SQLite's own readers take them: their
headers are read, their checksums are not recomputed (that was a fifth of the agent's CPU under
sustained writes). What must not change: the frames found, their offsets and running checksums, the
stops at stale or foreign frames, and the L0 files' content."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from lifeboat.agent import sqlite as sq
from lifeboat.agent.db import Database
from test_sqlite_wal import make_wal, pages
from test_wal_continuity import _from_l0_files, _rows


@pytest.mark.parametrize("big_endian", [False, True])
def test_published_frames_equal_the_checksummed_scan(big_endian: bool) -> None:
    ps = 1024
    p = pages(6, ps)
    wal = make_wal(ps, [(1, 0, p[0]), (2, 2, p[1]), (3, 0, p[2]), (1, 3, p[3]), (4, 0, p[4]), (2, 4, p[5])],
                   big_endian=big_endian)
    hdr = sq.parse_wal_header(wal)
    assert hdr is not None
    checked = sq.scan_frames(wal[32:], 32, hdr, hdr.checksum)
    assert len(checked) == 6
    assert sq.published_frames(wal[32:], 32, hdr) == checked


def test_published_frames_stop_at_other_salts_and_page_zero() -> None:
    ps = 512
    p = pages(4, ps)
    frames = [(1, 0, p[0]), (2, 2, p[1]), (1, 2, p[2]), (2, 2, p[3])]
    stale = make_wal(ps, frames, frame_salts={2: (1, 2)})  # a frame left from an older generation
    hdr = sq.parse_wal_header(stale)
    assert hdr is not None
    assert [f.pgno for f in sq.published_frames(stale[32:], 32, hdr)] == [1, 2]
    zero = make_wal(ps, [(1, 0, p[0]), (0, 2, p[1])])
    hdr = sq.parse_wal_header(zero)
    assert hdr is not None
    assert [f.pgno for f in sq.published_frames(zero[32:], 32, hdr)] == [1]


def test_a_sync_of_published_frames_computes_no_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "app.db"
    app = sqlite3.connect(path, isolation_level=None)
    app.execute("PRAGMA journal_mode = wal")
    app.execute("PRAGMA wal_autocheckpoint = 0")
    app.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    app.execute("CREATE TABLE u (id INTEGER PRIMARY KEY, v TEXT)")
    db = Database(str(path))
    db.open()
    try:
        db.sync()  # the first snapshot

        def refuse(*_: object) -> None:
            raise AssertionError("a published frame was checksummed")

        monkeypatch.setattr(sq, "frame_checksums", refuse)
        for i in range(50):
            app.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}" * 30,))
            if i % 10 == 9:
                result = db.sync()
                assert result.txids
        app.execute("BEGIN")
        app.executemany("INSERT INTO u (v) VALUES (?)", [(f"bulk {i}" * 50,) for i in range(2000)])
        app.execute("COMMIT")
        assert db.sync().txids
        monkeypatch.undo()  # the seal at close proves the WAL from its start: that scan checks sums
        assert _from_l0_files(db, tmp_path / "from-l0.db") == _rows(app)
    finally:
        db.close()
        app.close()
