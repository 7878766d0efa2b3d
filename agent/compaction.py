"""The replica's lifecycle: compaction levels, L9 snapshots, and retention.

Level N (1..n) merges level N-1 files above its own last TXID every `levels[N-1]` seconds, aligned
to wall-clock boundaries; L9 holds full snapshots. Retention keeps every moment of the snapshot
retention window restorable: unlike Litestream, the newest snapshot taken *before* the window starts
is kept too, together with the compacted files above it, so a point in time early in the window
still has a base to start from.

With `validation_interval`, every level's TXID chain is checked on a timer; with
`verify_compaction`, each compacted file is read back and its level checked (see validation.py).
Problems are logged by file name and counted in metrics (hook events `validation` and
`compaction_verify_error`).

Snapshot and compaction of one database never run at once (one lock), and both stream through
temporary files: memory stays bounded whatever the database's size. Compaction merges at most
`COMPACTION_FAN_IN` files at once, in rounds, so a backlog of any length neither exhausts file
descriptors nor grows memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from . import ltx
from .db import Database
from .replica import Holdings
from .storage import SNAPSHOT_LEVEL, FileInfo, ReplicaClient
from .storage.file import SealedFile
from .validation import LevelProblem, level_problems, read_back_problems

log = logging.getLogger("lifeboat.compaction")

Hook = Callable[[str, dict[str, Any]], None]
T = TypeVar("T")

# Files merged at once. A backlog after an outage can leave thousands of L0 files; merging them all
# in one pass needs a descriptor each (containers often allow 1,024) and holds a page of each.
COMPACTION_FAN_IN = 64


@dataclass
class LifecycleSettings:
    """Litestream's global lifecycle keys, in seconds."""

    levels: list[float] = field(default_factory=lambda: [30.0, 300.0, 3600.0])
    snapshot_interval: float = 86400.0
    snapshot_retention: float = 86400.0
    l0_retention: float = 300.0
    l0_retention_check_interval: float = 15.0
    retention_enabled: bool = True
    validation_interval: float = 0.0  # 0: no periodic validation
    verify_compaction: bool = False


def next_boundary(now: float, interval: float) -> float:
    """The next wall-clock multiple of `interval` after `now` (UTC midnight for 24 h)."""
    return (now // interval + 1) * interval


def contiguous_run(files: list[FileInfo], after: int) -> list[FileInfo]:
    """The longest run of files continuing a chain at `after` (0: start at the first file)."""
    run: list[FileInfo] = []
    prev = after
    for f in files:
        if f.max_txid <= prev:
            continue
        if prev and f.min_txid > prev + 1:
            break
        run.append(f)
        prev = f.max_txid
    return run


def snapshots_to_delete(snapshots: list[FileInfo], now: datetime, retention: float) -> list[FileInfo]:
    """Snapshots older than the window, except the one the window starts from (the newest of the
    old ones; when every snapshot is old, that is the newest snapshot, which always stays)."""
    cutoff = now - timedelta(seconds=retention)
    ordered = sorted(snapshots, key=lambda f: (f.created_at, f.max_txid))
    old = [f for f in ordered if f.created_at < cutoff]
    # The newest of the old ones is the base for points in time early in the window: keep it.
    return old[:-1]


def level_files_below_floor(files: list[FileInfo], floor: int) -> list[FileInfo]:
    """Compacted files wholly below the oldest kept snapshot; each level's last file always stays."""
    if not files:
        return []
    return [f for f in files[:-1] if f.max_txid <= floor]


def l0_files_to_delete(l0: list[FileInfo], l1_max: int, now: datetime, retention: float) -> list[FileInfo]:
    """L0 files covered by L1 and older than `retention`; stops at the first recent one; keeps the newest."""
    cutoff = now - timedelta(seconds=retention)
    out = []
    for f in l0[:-1]:
        if f.max_txid > l1_max or f.created_at >= cutoff:
            break
        out.append(f)
    return out


class Lifecycle:
    """Compaction, snapshots and retention for one database's replica."""

    def __init__(
        self,
        db: Database,
        client: ReplicaClient,
        settings: LifecycleSettings,
        hook: Hook | None = None,
        on_new_l0: Callable[[], None] | None = None,
        input_mark: Callable[[], int] | None = None,
    ) -> None:
        """`on_new_l0` is called (on the event loop) when a snapshot's own sync wrote L0 files: the
        uploader should ship them now, since no WAL change will announce them. `input_mark` gives
        the replica's L0 position: with it, timers skip work when no new file arrived (without it,
        every timer runs its job)."""
        self.db = db
        self.client = client
        self.settings = settings
        self.hook = hook or (lambda event, fields: None)
        self.on_new_l0 = on_new_l0 or (lambda: None)
        self.input_mark = input_mark
        self._next: dict[str, float] = {}
        self._running: set[str] = set()
        self._written: dict[int, int] = {}
        self._done_at: dict[str, object] = {}
        self._l0_eligible_at = 0.0
        self._held: Holdings | None = None
        self.lock = asyncio.Lock()
        self.work_dir = db.meta_dir / "tmp"

    @property
    def max_level(self) -> int:
        return len(self.settings.levels)

    @contextlib.asynccontextmanager
    async def _temp_file(self) -> AsyncIterator[BinaryIO]:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self.work_dir) as f:
            yield f  # type: ignore[misc]

    async def _fetch(self, info: FileInfo, dest: BinaryIO) -> None:
        async for chunk in self.client.open_ltx_file(info.level, info.min_txid, info.max_txid):
            dest.write(chunk)
        dest.seek(0)

    def _local_l0(self, info: FileInfo) -> Path | None:
        """The local copy of the L0 file `info`, if it is still there. Read in place: a local L0
        file never changes once published, and only L0 retention, under the same lock as every
        compaction, deletes it."""
        if info.level != 0 or info.min_txid != info.max_txid:
            return None
        path = self.db.l0_path(info.max_txid)
        return path if path.exists() else None

    async def compact(self, level: int) -> FileInfo | None:
        """Merge level-1 files above this level's last TXID into one file of this level."""
        async with self.lock:
            dst = await self.client.ltx_files(level)
            src = await self.client.ltx_files(level - 1)
            after = dst[-1].max_txid if dst else 0
            inputs = contiguous_run(src, after)
            if not inputs:
                # The files just above this level's end are gone (retention outran a slow level):
                # start again at the next run rather than stall forever; the snapshot covers the gap.
                inputs = contiguous_run([f for f in src if f.min_txid > after + 1], 0)
            if not inputs:
                return None
            t0 = time.monotonic()
            sealed = self._sealed_l0(inputs[0]) if len(inputs) == 1 else None
            if sealed is not None:
                # One TXID merges into itself: ship its L0 file as it is (a directory replica links it).
                with SealedFile(sealed) as out:
                    header = ltx.read_header(out, str(sealed))
                    out.seek(0)
                    info = await self.client.write_ltx_file(level, header.min_txid, header.max_txid, out)
            else:
                self.work_dir.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
                    merged = await self._merge(inputs, Path(tmp))
                    with open(merged.path, "rb") as out:
                        header = ltx.read_header(out, merged.name)
                        out.seek(0)
                        info = await self.client.write_ltx_file(level, header.min_txid, header.max_txid, out)
            if self.settings.verify_compaction:
                await self._verify_compaction(info, header, (inputs[0].min_txid, inputs[-1].max_txid))
            self.hook(
                "compaction",
                {"db": self.db.path, "level": level, "inputs": len(inputs), "seconds": time.monotonic() - t0},
            )
            return info

    def _sealed_l0(self, info: FileInfo) -> Path | None:
        """The local L0 file that can stand for a compaction of `info` alone: `info` holds one TXID
        (at any level, that TXID's L0 file merged with nothing), whose local L0 file is still there
        and holds its pages in the encoding this process writes (a merge would re-encode them)."""
        if info.min_txid != info.max_txid:
            return None
        path = self._local_l0(replace(info, level=0))
        if path is None:
            return None
        with open(path, "rb") as f:
            head = f.read(ltx.HEADER_SIZE + ltx.PAGE_HEADER_SIZE)
        return path if ltx.first_page_in_current_encoding(head) else None

    async def _verify_compaction(self, info: FileInfo, written: ltx.Header, span: tuple[int, int]) -> None:
        """Read the new file back and check its level's chain; a failure is logged and counted, and
        the file stays (as in Litestream): the periodic validation and restore planning see it."""
        name = f"level {info.level} file {info.name}"
        async with self._temp_file() as f:
            async for chunk in self.client.open_ltx_file(info.level, info.min_txid, info.max_txid):
                f.write(chunk)
            f.seek(0)
            problems = await asyncio.to_thread(read_back_problems, f, name, written, info.size, span)
        problems += [str(p) for p in level_problems(info.level, await self.client.ltx_files(info.level))]
        if problems:
            error = "; ".join(problems)
            log.warning(
                "%s: post-compaction verification failed: level=%d file=%s: %s", self.db.path, info.level, info.name,
                error, extra={"db": self.db.path},
            )
            self.hook("compaction_verify_error", {"db": self.db.path, "level": info.level, "error": error})

    async def validate(self) -> list[LevelProblem]:
        """Check that every level L0..Ln chains (no gap, overlap or disorder); log and report each
        problem. Snapshots (L9) each start at TXID 1 and are not a chain."""
        async with self.lock:
            problems: list[LevelProblem] = []
            for level in range(self.max_level + 1):
                problems += level_problems(level, await self.client.ltx_files(level))
        for p in problems:
            log.warning("%s: validation error detected: %s", self.db.path, p, extra={"db": self.db.path})
        self.hook("validation", {"db": self.db.path, "problems": len(problems)})
        return problems

    async def _merge(self, inputs: list[FileInfo], tmp: Path) -> _Part:
        """Merge `inputs` into one file in `tmp`, at most `COMPACTION_FAN_IN` files at a time.

        Each batch is fetched (local L0 files are read where they are), merged into a part and
        deleted; parts are then merged the same way until one is left. Open files and memory (one
        page per open input) stay bounded however many files a backlog left, and so does the disk:
        a batch of inputs plus the parts.
        """
        parts: list[_Part] = []
        for n, batch in enumerate(_batches(inputs, COMPACTION_FAN_IN)):
            fetched = []
            for info in batch:
                name = f"level {info.level} file {info.name}"
                local = self._local_l0(info)
                if local is not None:
                    fetched.append(_Part(local, name, owned=False))
                    continue
                part = _Part(tmp / f"in-{info.level}-{info.name}", name)
                with open(part.path, "wb") as f:
                    await self._fetch(info, f)
                fetched.append(part)
            parts.append(await asyncio.to_thread(_merge_parts, fetched, tmp / f"merged-0-{n}"))
        rounds = 1
        while len(parts) > 1:
            groups = enumerate(_batches(parts, COMPACTION_FAN_IN))
            parts = [await asyncio.to_thread(_merge_parts, g, tmp / f"merged-{rounds}-{n}") for n, g in groups]
            rounds += 1
        return parts[0]

    async def snapshot(self) -> FileInfo:
        """Write an L9 snapshot of the database at its current position."""
        async with self.lock:
            return await self._snapshot_locked()

    async def _snapshot_locked(self) -> FileInfo:
        t0 = time.monotonic()
        before = self.db.pos
        async with self._temp_file() as out:
            header = await asyncio.to_thread(self.db.snapshot_to, out)
            if header.max_txid > before:
                self.on_new_l0()
            out.flush()
            out.seek(0)
            info = await self.client.write_ltx_file(SNAPSHOT_LEVEL, 1, header.max_txid, out)
        self.hook("snapshot", {"db": self.db.path, "txid": header.max_txid, "seconds": time.monotonic() - t0})
        return info

    async def snapshot_due(self, now: float | None = None) -> bool:
        """No snapshot yet, or the newest is older than the snapshot interval."""
        snaps = await self.client.ltx_files(SNAPSHOT_LEVEL)
        if not snaps:
            return True
        now = time.time() if now is None else now
        return snaps[-1].created_at.timestamp() < now - self.settings.snapshot_interval

    async def enforce_snapshot_retention(self, now: datetime | None = None) -> list[FileInfo]:
        """Drop snapshots older than the window (keeping its base) and compacted files below it."""
        if not self.settings.retention_enabled:
            return []
        async with self.lock:
            now = now or datetime.now(UTC)
            snaps = await self.client.ltx_files(SNAPSHOT_LEVEL, 0, True)
            doomed = snapshots_to_delete(snaps, now, self.settings.snapshot_retention)
            if not doomed:
                return []
            kept = [s for s in snaps if s not in doomed]
            floor = min(s.max_txid for s in kept)
            for level in range(1, self.max_level + 1):
                doomed += level_files_below_floor(await self.client.ltx_files(level), floor)
            await self.client.delete_ltx_files(doomed)
            self.hook("retention", {"db": self.db.path, "deleted": len(doomed)})
            return doomed

    async def enforce_l0_retention(self, now: datetime | None = None) -> list[FileInfo]:
        """Delete L0 files that L1 covers once they are older than `l0-retention`, locally too."""
        if self.max_level == 0:
            return []
        async with self.lock:
            now = now or datetime.now(UTC)
            l1 = await self.client.ltx_files(1)
            l0 = await self.client.ltx_files(0)
            if not l1 or not l0:
                self._l0_eligible_at = math.inf
                return []
            doomed = l0_files_to_delete(l0, l1[-1].max_txid, now, self.settings.l0_retention)
            # The oldest file kept is the next one retention can take (never the newest), and only
            # once it is old enough, unless L1 grows or new L0 files arrive meanwhile.
            rest = l0[len(doomed) : -1]
            self._l0_eligible_at = (
                rest[0].created_at.timestamp() + self.settings.l0_retention
                if rest and rest[0].max_txid <= l1[-1].max_txid
                else math.inf
            )
            if self.settings.retention_enabled and doomed:
                await self.client.delete_ltx_files(doomed)
            # Local copies go whether or not remote retention is on: they exist only to resume and
            # to feed L1 compaction, and both are past them.
            for f in doomed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.db.l0_path(f.max_txid))
            return doomed

    # -- timers: driven by the store's scheduler, which asks what is due ---------------------------

    def start(self, now: float | None = None, held: Holdings | None = None) -> None:
        """Arm the timers: every level's compaction and the snapshot check at once, then on their
        wall-clock boundaries; L0 retention and validation one interval from now.

        `held`, what the replica held when it was opened, spares startup work it shows is done: a
        level that held every TXID its input level held has nothing to compact until its input
        gains a file, and a recent enough snapshot is known without listing them again.
        """
        now = time.time() if now is None else now
        self._held = held
        if held is not None and self.input_mark is not None:
            for lvl in range(1, self.max_level + 1):
                if held.max_txid(lvl - 1) <= held.max_txid(lvl):
                    # The input's mark as it was then: L0's is the replica's position, a compacted
                    # level's the count of files this process has written into it (none yet).
                    self._done_at[f"L{lvl}"] = held.position if lvl == 1 else 0
        self._next = {f"L{lvl}": now for lvl in range(1, self.max_level + 1)}
        self._next["startup snapshot"] = now
        self._next["L0 retention"] = now + self.settings.l0_retention_check_interval
        if self.settings.validation_interval > 0:
            self._next["validation"] = now + self.settings.validation_interval

    def due(self, now: float | None = None) -> list[Callable[[], Awaitable[None]]]:
        """The jobs due at `now` (wall clock), each armed again for its next time. A job still
        running is not started twice, and a job with provably nothing to do is not started at all:
        an idle database costs its timers a comparison, not a task."""
        now = time.time() if now is None else now
        jobs = []
        for name, when in list(self._next.items()):
            if when > now:
                continue
            following = self._following(name, now)
            if name == "startup snapshot":  # then on the snapshot interval's boundaries
                del self._next[name]
                self._next["snapshot"] = following
            else:
                self._next[name] = following
            if name in self._running or not self._worth_running(name, now):
                continue
            jobs.append(self._job(name))
        return jobs

    def _following(self, name: str, now: float) -> float:
        # Intervals are read on every tick: a reloaded configuration applies without a restart.
        s = self.settings
        if name.startswith("L") and name[1:].isdigit():
            return next_boundary(now, s.levels[int(name[1:]) - 1])
        if name in ("startup snapshot", "snapshot"):
            return next_boundary(now, s.snapshot_interval)
        if name == "L0 retention":
            return now + s.l0_retention_check_interval
        return now + s.validation_interval

    def _worth_running(self, name: str, now: float) -> bool:
        """False when nothing can have changed for the job since its last complete run: no new
        input below a level; no new L0 or L1 file, and no L0 file old enough yet, for L0 retention."""
        if self.input_mark is None:
            return True
        if name.startswith("L") and name[1:].isdigit():
            level = int(name[1:])
            return self._done_at.get(name) != self._mark(level - 1)
        if name == "L0 retention":
            return self._done_at.get(name) != (self._mark(0), self._mark(1)) or now >= self._l0_eligible_at
        return True

    def _mark(self, level: int) -> int:
        """What changes whenever `level` gains a file: the uploaded position for L0, else how many
        files this process compacted into it."""
        assert self.input_mark is not None
        return self.input_mark() if level == 0 else self._written.get(level, 0)

    def _job(self, name: str) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            self._running.add(name)
            try:
                if name.startswith("L") and name[1:].isdigit():
                    await self._guarded(f"{name} compaction", lambda: self._compact_level(int(name[1:])))
                    if name == "L1":
                        await self._guarded("L0 retention", self._l0_retention)
                elif name == "startup snapshot":
                    await self._guarded("snapshot", self._startup_snapshot)
                elif name == "snapshot":
                    await self._guarded("snapshot", self.snapshot)
                    await self._guarded("snapshot retention", self.enforce_snapshot_retention)
                elif name == "L0 retention":
                    await self._guarded("L0 retention", self._l0_retention)
                else:
                    await self._guarded("validation", self.validate)
            finally:
                self._running.discard(name)

        return job

    async def _compact_level(self, level: int) -> None:
        mark = self._mark(level - 1) if self.input_mark is not None else None
        if await self.compact(level) is not None:
            self._written[level] = self._written.get(level, 0) + 1
        self._done_at[f"L{level}"] = mark

    async def _l0_retention(self) -> None:
        marks = (self._mark(0), self._mark(1)) if self.input_mark is not None else None
        await self.enforce_l0_retention()
        self._done_at["L0 retention"] = marks

    async def _startup_snapshot(self) -> None:
        held = self._held
        if held is None:
            due = await self.snapshot_due()
        else:  # nothing but this process writes snapshots since the replica was listed at open
            newest = held.newest_snapshot
            due = newest is None or newest.timestamp() < time.time() - self.settings.snapshot_interval
        if not due:
            return
        async with self.lock:
            try:
                # At TXID 1 the database is its first L0 file, a full snapshot like every first
                # one: shipped as it is rather than read from the database and encoded again.
                first = SealedFile(self.db.l0_path(1)) if self.db.pos == 1 else None
            except FileNotFoundError:  # local files went (the replica was found ahead)
                first = None
            if first is None:
                await self._snapshot_locked()
                return
            t0 = time.monotonic()
            with first:
                await self.client.write_ltx_file(SNAPSHOT_LEVEL, 1, 1, first)
            self.hook("snapshot", {"db": self.db.path, "txid": 1, "seconds": time.monotonic() - t0})

    async def _guarded(self, what: str, op: Callable[[], Any]) -> None:
        try:
            await op()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next tick retries; the error is visible in logs and metrics
            log.error("%s: %s failed: %s", self.db.path, what, exc)
            self.hook("lifecycle_error", {"db": self.db.path, "what": what, "error": str(exc)})


@dataclass(frozen=True)
class _Part:
    """An LTX file a compaction reads, with the name its errors carry; `owned`: in its work
    directory, deleted once merged (else a local L0 file, left alone)."""

    path: Path
    name: str
    owned: bool = True  # the compaction's own file, deleted once merged (not a local L0 file)


def _batches(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _merge_parts(parts: list[_Part], dest: Path) -> _Part:
    """Merge contiguous LTX files into `dest` (newest page wins), then delete them."""
    with contextlib.ExitStack() as stack:
        decoders = [ltx.Decoder(stack.enter_context(open(p.path, "rb", buffering=1 << 16)), p.name) for p in parts]
        with open(dest, "wb", buffering=1 << 20) as out:
            ltx.compact(decoders, out)
    for p in parts:
        if p.owned:
            p.path.unlink()
    name = parts[0].name if len(parts) == 1 else f"merge of {parts[0].name} .. {parts[-1].name}"
    return _Part(dest, name)
