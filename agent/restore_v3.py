"""Restore of a Litestream 0.3 replica: the `generations/` layout 0.3 users migrate from.

A 0.3 replica holds generations (16 hex digits), each with LZ4-framed full-database snapshots
`snapshots/<index %08x>.snapshot.lz4` and LZ4-framed WAL segments
`wal/<index %08x>_<offset %08x>.wal.lz4`: the bytes of WAL file `index` from `offset` on. As
Litestream 0.5 does, the newest snapshot (by creation time) is decompressed, then each later WAL
index is rebuilt from its segments (gap-free from offset 0) and checkpointed into it. Unlike
Litestream, a segment whose frames SQLite would skip (a bad salt or checksum past some point) is
an error naming it, not a silently shorter restore: every frame of every WAL must be applied.

Litestream reads this layout from file and S3 replicas; here from file replicas.
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import lz4.frame

from .sqlite import WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE

GENERATION = re.compile(r"^[0-9a-f]{16}$")
SNAPSHOT = re.compile(r"^([0-9a-f]{8})\.snapshot\.lz4$")
SEGMENT = re.compile(r"^([0-9a-f]{8})_([0-9a-f]{8,16})\.wal\.lz4$")


class V3Error(RuntimeError):
    """A 0.3 replica that cannot be restored; the message names the file at fault."""


@dataclass(frozen=True, slots=True)
class V3File:
    """A snapshot (offset None) or WAL segment of one generation."""

    path: Path
    generation: str
    index: int
    offset: int | None
    created_at: datetime


def _entries(directory: Path, pattern: re.Pattern[str], generation: str, snapshot: bool) -> list[V3File]:
    out: list[V3File] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return out
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None:
            continue
        created = datetime.fromtimestamp(entry.stat().st_mtime_ns / 1e9, tz=UTC)
        offset = None if snapshot else int(m.group(2), 16)
        out.append(V3File(Path(entry.path), generation, int(m.group(1), 16), offset, created))
    return sorted(out, key=lambda f: (f.index, f.offset or 0))


def scan(root: Path) -> tuple[list[V3File], list[V3File]]:
    """Every generation's snapshots and WAL segments under `root/generations` (empty: no 0.3 backup)."""
    snapshots: list[V3File] = []
    segments: list[V3File] = []
    try:
        generations = sorted(e.name for e in os.scandir(root / "generations") if e.is_dir())
    except FileNotFoundError:
        return snapshots, segments
    for gen in filter(GENERATION.match, generations):
        snapshots += _entries(root / "generations" / gen / "snapshots", SNAPSHOT, gen, True)
        segments += _entries(root / "generations" / gen / "wal", SEGMENT, gen, False)
    return snapshots, segments


def updated_at(snapshots: list[V3File], segments: list[V3File]) -> datetime | None:
    """When the 0.3 backup was last written (None: there is none)."""
    return max((f.created_at for f in snapshots + segments), default=None)


def _decompress(src: Path) -> bytes:
    try:
        return lz4.frame.decompress(src.read_bytes())
    except RuntimeError as exc:  # lz4 reports a corrupt frame or a content checksum mismatch so
        raise V3Error(f"{src}: corrupt LZ4 data ({exc})") from None


def _checkpoint(db: Path, wal: bytes, name: str) -> None:
    """Apply one rebuilt WAL file to `db`; every frame in it must be part of a committed
    transaction SQLite accepts."""
    page_size = int.from_bytes(wal[8:12], "big") if len(wal) >= WAL_HEADER_SIZE else 0
    if page_size < 512 or (len(wal) - WAL_HEADER_SIZE) % (WAL_FRAME_HEADER_SIZE + page_size):
        raise V3Error(f"{name}: not a whole WAL ({len(wal)} bytes)")
    frames = (len(wal) - WAL_HEADER_SIZE) // (WAL_FRAME_HEADER_SIZE + page_size)
    Path(f"{db}-wal").write_bytes(wal)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        # FULL reports the frames (TRUNCATE reports 0 once it emptied the WAL).
        _busy, log, done = conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):  # the next index's WAL must not meet this one's wal-index
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    if (log, done) != (frames, frames):
        raise V3Error(f"{name}: SQLite accepts {done} of its {frames} WAL frames (bad checksum or salt)")


def rebuild(snapshot: V3File, segments: list[V3File], tmp: Path) -> int:
    """Write the snapshot into `tmp` and apply the generation's later WAL indexes; returns the last
    WAL index applied (the snapshot's own index when none)."""
    tmp.write_bytes(_decompress(snapshot.path))
    later = [s for s in segments if s.generation == snapshot.generation and s.index >= snapshot.index]
    expected = snapshot.index
    wal = bytearray()
    name = ""
    for seg in later:
        if seg.offset == 0:
            if wal:
                _checkpoint(tmp, bytes(wal), name)
            if seg.index != expected:
                raise V3Error(f"{seg.path}: missing WAL index {expected:08x} before it")
            expected += 1
            wal = bytearray()
        elif seg.index != expected - 1 or seg.offset != len(wal):
            raise V3Error(f"{seg.path}: missing WAL segment: expected index {expected - 1:08x} offset {len(wal):08x}")
        wal += _decompress(seg.path)
        name = f"WAL index {seg.index:08x} of generation {seg.generation}"
    if wal:
        _checkpoint(tmp, bytes(wal), name)
    return expected - 1 if later else snapshot.index
