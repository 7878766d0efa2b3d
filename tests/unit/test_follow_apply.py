"""Follow mode's apply step: one LTX file as one SQLite rollback-journal transaction.

The journal is SQLite's own format, so SQLite itself (any connection that may write, or the
resumed follower) rolls back an apply that was killed half-way.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from lifeboat.agent import ltx
from lifeboat.agent.follow import (
    _write_journal,
    apply_file,
    apply_files,
    read_txid,
    roll_back,
    to_rollback_mode,
    write_txid,
)
from lifeboat.agent.restore import RestoreError

PAGE = 4096


def _db(path: Path, rows: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA page_size = {PAGE}")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(os.urandom(200).hex(),) for _ in range(rows)])
    conn.close()


def _count(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        conn.close()


def _ltx_of(db: Path, dest: Path, txid: int) -> None:
    """Every page of `db` as the LTX file of transaction `txid`."""
    data = db.read_bytes()
    pages = [(i + 1, data[i * PAGE : (i + 1) * PAGE]) for i in range(len(data) // PAGE)]
    header = ltx.Header(page_size=PAGE, commit=len(pages), min_txid=txid, max_txid=txid, timestamp=1)
    with open(dest, "wb") as f:
        ltx.encode(header, pages, f)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A follower's database (100 rows) and an LTX file taking it to 300 rows."""
    out, newer = tmp_path / "out.db", tmp_path / "newer.db"
    _db(out, 100)
    shutil.copy(out, newer)
    _db(newer, 200)
    _ltx_of(newer, tmp_path / "2.ltx", 2)
    return out, tmp_path / "2.ltx"


def test_apply_commits_and_advances_change_counter(pair: tuple[Path, Path]) -> None:
    out, file = pair
    before = int.from_bytes(out.read_bytes()[24:28], "big")
    apply_file(out, file, "2.ltx", PAGE)
    head = out.read_bytes()[:100]
    assert _count(out) == 300
    assert head[18:20] == b"\x01\x01"
    assert int.from_bytes(head[24:28], "big") == before + 1 == int.from_bytes(head[92:96], "big")
    assert int.from_bytes(head[28:32], "big") == out.stat().st_size // PAGE
    assert not Path(f"{out}-journal").exists()


def test_killed_apply_is_rolled_back_by_sqlite(pair: tuple[Path, Path]) -> None:
    """The state a follower killed mid-apply leaves: journal written, pages half overwritten."""
    out, _ = pair
    original = out.read_bytes()
    pages = len(original) // PAGE
    fd = os.open(out, os.O_RDWR)
    try:
        _write_journal(Path(f"{out}-journal"), fd, [1, 2, pages], PAGE, pages)
        os.pwrite(fd, b"\xff" * PAGE, PAGE)  # page 2 clobbered
        os.pwrite(fd, b"\xee" * PAGE * 3, pages * PAGE)  # the file grown by 3 pages
    finally:
        os.close(fd)
    roll_back(out)
    assert out.read_bytes() == original
    assert not Path(f"{out}-journal").exists()
    assert _count(out) == 100


def test_corrupt_file_leaves_database_untouched(pair: tuple[Path, Path]) -> None:
    out, file = pair
    original = out.read_bytes()
    data = bytearray(file.read_bytes())
    data[-20] ^= 0xFF  # the page index: the checksum no longer matches
    file.write_bytes(bytes(data))
    with pytest.raises(ltx.LTXError):
        apply_file(out, file, "2.ltx", PAGE)
    assert out.read_bytes() == original


def _counter(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[24:28], "big")


def test_consecutive_files_apply_as_one_transaction(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    """A busy writer's many small files per poll cost one journal and one set of fsyncs."""
    out, second = pair
    newer = tmp_path / "newer.db"  # the pair's 300-row state; one more transaction on top
    _db(newer, 50)
    _ltx_of(newer, tmp_path / "3.ltx", 3)
    before = _counter(out)

    headers = apply_files(out, [(second, "2.ltx"), (tmp_path / "3.ltx", "3.ltx")], PAGE)

    assert [h.max_txid for h in headers] == [2, 3]
    assert _count(out) == 350
    assert _counter(out) == before + 1, "not one transaction"
    assert not Path(f"{out}-journal").exists()


def test_a_shrinking_file_ends_its_transaction(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    out, second = pair
    shrunk = tmp_path / "shrunk.db"
    shutil.copy(tmp_path / "newer.db", shrunk)
    conn = sqlite3.connect(shrunk, isolation_level=None)
    conn.execute("DELETE FROM t WHERE id > 10")
    conn.execute("VACUUM")
    conn.close()
    _ltx_of(shrunk, tmp_path / "3.ltx", 3)
    _db(shrunk, 5)
    _ltx_of(shrunk, tmp_path / "4.ltx", 4)
    before = _counter(out)

    apply_files(out, [(second, "2.ltx"), (tmp_path / "3.ltx", "3.ltx"), (tmp_path / "4.ltx", "4.ltx")], PAGE)

    assert _count(out) == 15
    assert _counter(out) == before + 2, "the shrinking file did not end its transaction"
    assert out.read_bytes()[100:] == shrunk.read_bytes()[100:]


def test_txid_file_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "db"
    assert read_txid(out) == 0
    write_txid(out, 0x1F)
    assert Path(f"{out}-txid").read_text() == "000000000000001f\n"
    assert read_txid(out) == 0x1F
    Path(f"{out}-txid").write_text("garbage\n")
    with pytest.raises(RestoreError, match="-txid: not a TXID"):
        read_txid(out)


def test_rollback_mode_header(tmp_path: Path) -> None:
    db = tmp_path / "wal.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.close()
    assert db.read_bytes()[18:20] == b"\x02\x02"
    to_rollback_mode(db)
    assert db.read_bytes()[18:20] == b"\x01\x01"
    assert _count(db) == 0
