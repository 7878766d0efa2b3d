"""Restore of a Litestream 0.3 replica (`generations/<id>/snapshots|wal`), built here from the
format's description: LZ4 frames of a whole database and of WAL byte ranges."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import lz4.frame
from helpers import file_url, lifeboat, no_traceback, ok, rows

GEN = "0123456789abcdef"
PAGE = 4096


def _lz4(data: bytes) -> bytes:
    # An LZ4 frame with a content checksum, as Litestream 0.3's writer made them.
    return lz4.frame.compress(data, content_checksum=True)


def _write(conn: sqlite3.Connection, first: int, n: int) -> None:
    for b in range(first, first + n):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t (batch, v) VALUES (?, ?)", [(b, os.urandom(100).hex()) for _ in range(10)])
        conn.execute("COMMIT")


def build_v3(tmp_path: Path) -> tuple[Path, Path]:
    """A source database and its 0.3 replica: snapshot at WAL index 0, index 0 in two segments,
    index 1 in one. Returns (source, replica root)."""
    src, root = tmp_path / "src.db", tmp_path / "replica"
    gen = root / "generations" / GEN
    (gen / "snapshots").mkdir(parents=True)
    (gen / "wal").mkdir()
    conn = sqlite3.connect(src, isolation_level=None)
    conn.execute(f"PRAGMA page_size = {PAGE}")
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, batch INTEGER, v TEXT)")
    _write(conn, 1, 3)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (gen / "snapshots" / "00000000.snapshot.lz4").write_bytes(_lz4(src.read_bytes()))
    _write(conn, 4, 5)
    wal = Path(f"{src}-wal").read_bytes()
    cut = 32 + 3 * (24 + PAGE)
    (gen / "wal" / "00000000_00000000.wal.lz4").write_bytes(_lz4(wal[:cut]))
    (gen / "wal" / f"00000000_{cut:08x}.wal.lz4").write_bytes(_lz4(wal[cut:]))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _write(conn, 9, 4)
    (gen / "wal" / "00000001_00000000.wal.lz4").write_bytes(_lz4(Path(f"{src}-wal").read_bytes()))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return src, root


def test_snapshot_and_wal_segments(tmp_path: Path) -> None:
    src, root = build_v3(tmp_path)
    out = tmp_path / "out.db"
    proc = ok(lifeboat("restore", "-integrity-check", "full", "-o", str(out), file_url(root)))
    no_traceback(proc.stderr)
    assert not Path(f"{out}-wal").exists()
    assert rows(out) == rows(src)
    assert {r[1] for r in rows(out)} == set(range(1, 13))


def test_corrupt_segment_names_it(tmp_path: Path) -> None:
    _, root = build_v3(tmp_path)
    seg = next((root / "generations" / GEN / "wal").glob("00000000_0000[1-9a-f]*"))
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    out = tmp_path / "out.db"
    proc = lifeboat("restore", "-o", str(out), file_url(root))
    assert proc.returncode == 1 and seg.name in proc.stderr, proc.stderr
    no_traceback(proc.stderr)
    assert not out.exists() and not Path(f"{out}.tmp").exists()


def test_bad_wal_frame_is_not_skipped(tmp_path: Path) -> None:
    """Well-formed LZ4 around a WAL frame with a broken checksum: SQLite would stop at it."""
    _, root = build_v3(tmp_path)
    seg = root / "generations" / GEN / "wal" / "00000001_00000000.wal.lz4"
    wal = bytearray(lz4.frame.decompress(seg.read_bytes()))
    wal[32 + 24 + 100] ^= 0xFF  # the first frame's page data
    seg.write_bytes(_lz4(bytes(wal)))
    out = tmp_path / "out.db"
    proc = lifeboat("restore", "-o", str(out), file_url(root))
    assert proc.returncode == 1 and "WAL index 00000001" in proc.stderr, proc.stderr
    assert not out.exists()


def test_missing_segment_is_an_error(tmp_path: Path) -> None:
    _, root = build_v3(tmp_path)
    (root / "generations" / GEN / "wal" / "00000000_00000000.wal.lz4").unlink()
    proc = lifeboat("restore", "-o", str(tmp_path / "out.db"), file_url(root))
    assert proc.returncode == 1 and "missing WAL" in proc.stderr, proc.stderr


def test_newer_format_chosen(tmp_path: Path) -> None:
    """The 0.3 backup is used only when it was written after every LTX file, as Litestream chooses."""
    src, root = build_v3(tmp_path)
    ltx_db = tmp_path / "ltx.db"
    shutil.copy(src, ltx_db)
    conn = sqlite3.connect(ltx_db, isolation_level=None)
    _write(conn, 100, 1)  # only the LTX side has batch 100
    conn.close()
    ok(lifeboat("replicate", "-once", str(ltx_db), file_url(root)))
    v3_files = [p for p in (root / "generations").rglob("*.lz4")]

    for p in v3_files:
        os.utime(p, (1e9, 1e9))  # 2001: older than the LTX files
    ok(lifeboat("restore", "-o", str(tmp_path / "a.db"), file_url(root)))
    assert 100 in {r[1] for r in rows(tmp_path / "a.db")}

    future = 4e9  # 2096: newer than the LTX files
    for p in v3_files:
        os.utime(p, (future, future))
    ok(lifeboat("restore", "-o", str(tmp_path / "b.db"), file_url(root)))
    assert rows(tmp_path / "b.db") == rows(src)
