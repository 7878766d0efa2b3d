"""Restore of a Litestream 0.3 replica: the `generations/` layout 0.3 users migrate from.

A 0.3 replica holds generations (16 hex digits), each with LZ4-framed full-database snapshots
`snapshots/<index %08x>.snapshot.lz4` and LZ4-framed WAL segments
`wal/<index %08x>_<offset %08x>.wal.lz4`: the bytes of WAL file `index` from `offset` on. As
Litestream 0.5 does, the newest snapshot (by creation time) is decompressed, then each later WAL
index is rebuilt from its segments (gap-free from offset 0) and checkpointed into it. Unlike
Litestream, a segment whose frames SQLite would skip (a bad salt or checksum past some point) is
an error naming it, not a silently shorter restore: every frame of every WAL must be applied.

A backend offers the layout by the two methods of `V3Readable` (file, S3, GCS and Azure Blob
replicas do); the files a restore needs are downloaded first, then rebuilt locally.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

import lz4.frame

from .sqlite import WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE

GENERATION = re.compile(r"^[0-9a-f]{16}$")
SNAPSHOT = re.compile(r"^([0-9a-f]{8})\.snapshot\.lz4$")
SEGMENT = re.compile(r"^([0-9a-f]{8})_([0-9a-f]{8,16})\.wal\.lz4$")
GENERATIONS = "generations"


class V3Error(RuntimeError):
    """A 0.3 replica that cannot be restored; the message names the file at fault."""


@runtime_checkable
class V3Readable(Protocol):
    """A replica client that can list and read the 0.3 layout."""

    async def v3_files(self) -> list[tuple[str, int, datetime]]:
        """(key, size, created) of every object under `<replica>/generations/`; keys are relative
        to the replica's root, `/`-separated (`generations/<id>/wal/<name>`)."""
        ...

    def open_v3_file(self, key: str) -> AsyncIterator[bytes]:
        """Stream one object listed by `v3_files`. Raises NotFound."""
        ...


@dataclass(frozen=True, slots=True)
class V3File:
    """A snapshot (offset None) or WAL segment of one generation."""

    key: str
    generation: str
    index: int
    offset: int | None
    size: int
    created_at: datetime


def classify(entries: Iterable[tuple[str, int, datetime]]) -> tuple[list[V3File], list[V3File]]:
    """The snapshots and WAL segments among listing entries (other names are skipped), sorted by
    (index, offset)."""
    snapshots: list[V3File] = []
    segments: list[V3File] = []
    for key, size, created in entries:
        parts = key.split("/")
        if len(parts) != 4 or parts[0] != GENERATIONS or not GENERATION.match(parts[1]):
            continue
        if parts[2] == "snapshots" and (m := SNAPSHOT.match(parts[3])):
            snapshots.append(V3File(key, parts[1], int(m.group(1), 16), None, size, created))
        elif parts[2] == "wal" and (m := SEGMENT.match(parts[3])):
            segments.append(V3File(key, parts[1], int(m.group(1), 16), int(m.group(2), 16), size, created))
    return sorted(snapshots, key=_order), sorted(segments, key=_order)


def _order(f: V3File) -> tuple[str, int, int]:
    return f.generation, f.index, f.offset or 0


def updated_at(snapshots: list[V3File], segments: list[V3File]) -> datetime | None:
    """When the 0.3 backup was last written (None: there is none)."""
    return max((f.created_at for f in snapshots + segments), default=None)


def needed(snapshot: V3File, segments: list[V3File]) -> list[V3File]:
    """The snapshot and the WAL segments of its generation a rebuild from it applies."""
    return [snapshot] + [s for s in segments if s.generation == snapshot.generation and s.index >= snapshot.index]


def _decompress(f: V3File, local: Mapping[str, Path]) -> bytes:
    try:
        return lz4.frame.decompress(local[f.key].read_bytes())
    except RuntimeError as exc:  # lz4 reports a corrupt frame or a content checksum mismatch so
        raise V3Error(f"{f.key}: corrupt LZ4 data ({exc})") from None


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


def rebuild(snapshot: V3File, segments: list[V3File], tmp: Path, local: Mapping[str, Path]) -> int:
    """Write the snapshot into `tmp` and apply the generation's later WAL indexes; returns the last
    WAL index applied (the snapshot's own index when none). `local` maps each key of `needed` to
    its downloaded copy."""
    tmp.write_bytes(_decompress(snapshot, local))
    later = needed(snapshot, segments)[1:]
    expected = snapshot.index
    wal = bytearray()
    name = ""
    for seg in later:
        if seg.offset == 0:
            if wal:
                _checkpoint(tmp, bytes(wal), name)
            if seg.index != expected:
                raise V3Error(f"{seg.key}: missing WAL index {expected:08x} before it")
            expected += 1
            wal = bytearray()
        elif seg.index != expected - 1 or seg.offset != len(wal):
            raise V3Error(f"{seg.key}: missing WAL segment: expected index {expected - 1:08x} offset {len(wal):08x}")
        wal += _decompress(seg, local)
        name = f"WAL index {seg.index:08x} of generation {seg.generation}"
    if wal:
        _checkpoint(tmp, bytes(wal), name)
    return expected - 1 if later else snapshot.index
