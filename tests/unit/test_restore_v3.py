"""Restore of a Litestream 0.3 replica (`generations/<id>/snapshots|wal`) from a file replica."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import lz4.frame
from helpers import file_url, lifeboat, no_traceback, ok, rows
from legacy_v3 import GEN, build_v3, lz4_frame, write_batches


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
    seg.write_bytes(lz4_frame(bytes(wal)))
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
    write_batches(ltx_db, 100, 1)  # only the LTX side has batch 100
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
