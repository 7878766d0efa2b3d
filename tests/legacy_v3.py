"""A Litestream 0.3 replica (`generations/<id>/snapshots|wal`) built from the format's description:
LZ4 frames of a whole database and of WAL byte ranges. Shared by the 0.3 restore tests."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import lz4.frame

GEN = "0123456789abcdef"
PAGE = 4096


def lz4_frame(data: bytes) -> bytes:
    """An LZ4 frame with a content checksum, as Litestream 0.3's writer made them."""
    return lz4.frame.compress(data, content_checksum=True)


def _write(conn: sqlite3.Connection, first: int, n: int) -> None:
    for b in range(first, first + n):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t (batch, v) VALUES (?, ?)", [(b, os.urandom(100).hex()) for _ in range(10)])
        conn.execute("COMMIT")


def write_batches(path: Path, first: int, n: int) -> None:
    """`n` transactions of 10 rows (batches `first`..) into table t of the database at `path`."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _write(conn, first, n)
    finally:
        conn.close()


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
    (gen / "snapshots" / "00000000.snapshot.lz4").write_bytes(lz4_frame(src.read_bytes()))
    _write(conn, 4, 5)
    wal = Path(f"{src}-wal").read_bytes()
    cut = 32 + 3 * (24 + PAGE)
    (gen / "wal" / "00000000_00000000.wal.lz4").write_bytes(lz4_frame(wal[:cut]))
    (gen / "wal" / f"00000000_{cut:08x}.wal.lz4").write_bytes(lz4_frame(wal[cut:]))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _write(conn, 9, 4)
    (gen / "wal" / "00000001_00000000.wal.lz4").write_bytes(lz4_frame(Path(f"{src}-wal").read_bytes()))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return src, root


