"""Restore: plan which replica files rebuild the database, fetch them in parallel, apply, verify.

The output is assembled in `<out>.tmp`, checked (every input's checksum, TXID contiguity, pages
1..Commit all present, optionally `PRAGMA integrity_check`), fsynced and renamed: a failed restore
never leaves a database behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from . import ltx
from .sqlite import lock_pgno
from .storage import SNAPSHOT_LEVEL, FileInfo, NotFound, ReplicaClient
from .storage.file import fsync_dir

MAX_LEVEL = SNAPSHOT_LEVEL
REPLAN_ATTEMPTS = 3
# A snapshot's pages come in order: writing runs of them with one pwritev each saves a system call
# per page. 256 pages stay within IOV_MAX (1024) and bound what is held at once.
WRITE_RUN_PAGES = 256


class RestoreError(RuntimeError):
    """A restore could not produce a correct database; the message names the file at fault."""


class NoBackupError(RestoreError):
    """The replica has no files that can restore the requested point."""


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What a restore produced."""

    path: str
    txid: int
    timestamp: datetime
    files: int
    integrity_check: str


def plan(
    levels: dict[int, list[FileInfo]], *, txid: int | None = None, timestamp: datetime | None = None
) -> list[FileInfo]:
    """Litestream's restore planner: the newest eligible snapshot, then the best contiguous chain.

    At each step the candidate with the largest MaxTXID wins (then smallest MinTXID, higher level,
    earlier creation), so compacted levels cover long stretches and L0 fills the tail.
    """

    def eligible(f: FileInfo, snapshot: bool) -> bool:
        if txid is not None and f.max_txid > txid:
            return False
        if timestamp is not None:
            return f.created_at < timestamp if snapshot else f.created_at <= timestamp
        return True

    chosen: list[FileInfo] = []
    current = 0
    snaps = [f for f in levels.get(SNAPSHOT_LEVEL, []) if eligible(f, True)]
    if snaps:
        snap = max(snaps, key=lambda f: (f.max_txid, f.created_at))
        chosen.append(snap)
        current = snap.max_txid
    candidates = [f for lvl in range(MAX_LEVEL - 1, -1, -1) for f in levels.get(lvl, []) if eligible(f, False)]
    while True:
        usable = [f for f in candidates if f.min_txid <= current + 1 and f.max_txid > current]
        if not usable:
            break
        best = min(usable, key=lambda f: (-f.max_txid, f.min_txid, -f.level, f.created_at))
        chosen.append(best)
        current = best.max_txid
    if txid is None and timestamp is None:
        for f in candidates:
            if f.min_txid > current + 1:
                raise RestoreError(
                    f"non-contiguous ltx files: level {f.level} file {f.name} starts after txid {current}"
                )
    if not chosen or (txid is not None and current < txid):
        raise NoBackupError("no matching backup files available")
    if chosen[0].min_txid != 1:
        raise RestoreError(f"no snapshot to start from: the first file is {chosen[0].name} (level {chosen[0].level})")
    return chosen


async def list_levels(client: ReplicaClient, use_metadata: bool = False) -> dict[int, list[FileInfo]]:
    """Every level's files."""
    results = await asyncio.gather(*(client.ltx_files(lvl, 0, use_metadata) for lvl in range(MAX_LEVEL + 1)))
    return {lvl: files for lvl, files in enumerate(results) if files}


async def _download(client: ReplicaClient, info: FileInfo, dest: Path) -> None:
    with open(dest, "wb") as f:
        async for chunk in client.open_ltx_file(info.level, info.min_txid, info.max_txid):
            f.write(chunk)
    if os.path.getsize(dest) != info.size and info.size:
        raise RestoreError(
            f"level {info.level} file {info.name}: downloaded {os.path.getsize(dest)} bytes, listing says {info.size}"
        )


def _apply(files: list[tuple[FileInfo, Path]], out: Path, progress: Callable[[int], None] | None) -> int:
    """Write every file's pages into `out` in order (newest wins); returns the final commit."""
    page_size = 0
    commit = 0
    prev_max = 0
    present = bytearray()
    # A header's commit sizes the page bitmap: it must be one these files can physically back (each
    # stored page costs at least its header, size and LZ4 output), or a forged header would make
    # restore allocate (and scan) gigabytes.
    total_bytes = sum(os.path.getsize(path) for _, path in files)
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for info, path in files:
            name = f"level {info.level} file {info.name}"
            with open(path, "rb", buffering=1 << 20) as f:
                dec = ltx.Decoder(f, name)
                h = dec.header
                if (h.min_txid, h.max_txid) != (info.min_txid, info.max_txid):
                    raise RestoreError(f"{name}: header says txids {h.min_txid}-{h.max_txid}")
                if page_size and h.page_size != page_size:
                    raise RestoreError(f"{name}: page size {h.page_size} differs from {page_size}")
                if prev_max and not (h.min_txid <= prev_max + 1 and h.max_txid > prev_max):
                    raise RestoreError(f"{name}: not contiguous with txid {prev_max}")
                page_size = h.page_size
                commit = h.commit
                if commit > total_bytes // (8 + page_size // 512) + 2:
                    raise RestoreError(
                        f"{name}: header claims {commit} pages of {page_size} bytes, more than the "
                        f"{total_bytes} bytes of replica files can hold"
                    )
                if len(present) < commit + 1:
                    present.extend(bytes(commit + 1 - len(present)))
                run: list[bytes] = []  # consecutive pages, written with one pwritev
                first = 0
                for pgno, data in dec.pages():
                    if run and (pgno != first + len(run) or len(run) == WRITE_RUN_PAGES):
                        os.pwritev(fd, run, (first - 1) * page_size)
                        run.clear()
                    if not run:
                        first = pgno
                    run.append(data)
                    present[pgno] = 1
                if run:  # before the next file, whose pages may overwrite these
                    os.pwritev(fd, run, (first - 1) * page_size)
                prev_max = h.max_txid
            if progress is not None:
                progress(info.size)
        lock = lock_pgno(page_size)
        missing = [p for p in range(1, commit + 1) if not present[p] and p != lock][:5]
        if missing:
            raise RestoreError(f"restored database lacks pages {missing} (of 1..{commit})")
        os.ftruncate(fd, commit * page_size)
        os.fsync(fd)
    finally:
        os.close(fd)
    return commit


def _integrity_check(path: Path, mode: str) -> str:
    if mode == "none":
        return "skipped"
    pragma = "quick_check" if mode == "quick" else "integrity_check"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(f"PRAGMA {pragma}").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    return "ok" if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:5])


async def restore(
    client: ReplicaClient,
    output: str,
    *,
    txid: int | None = None,
    timestamp: datetime | None = None,
    parallelism: int = 8,
    integrity_check: str = "none",
    progress: Callable[[int], None] | None = None,
) -> RestoreResult:
    """Restore the replica into `output` (which must not exist): latest, or as of txid/timestamp."""
    out = Path(output).absolute()
    tmp = out.with_name(out.name + ".tmp")
    with tempfile.TemporaryDirectory(prefix=".lifeboat-restore-", dir=out.parent) as work:
        files, paths = await _fetch_plan(client, Path(work), txid, timestamp, parallelism)
        try:
            await asyncio.to_thread(_apply, list(zip(files, paths, strict=True)), tmp, progress)
            check = await asyncio.to_thread(_integrity_check, tmp, integrity_check)
            if check not in ("ok", "skipped"):
                raise RestoreError(f"{out}: integrity check failed: {check}")
        except ltx.LTXError as exc:
            _remove(tmp)
            raise RestoreError(str(exc)) from None
        except BaseException:
            _remove(tmp)
            raise
    os.replace(tmp, out)
    fsync_dir(out.parent)
    last = files[-1]
    return RestoreResult(str(out), last.max_txid, last.created_at, len(files), check)


async def _download_all(client: ReplicaClient, files: list[FileInfo], paths: list[Path], parallelism: int) -> None:
    sem = asyncio.Semaphore(max(1, parallelism))

    async def fetch(info: FileInfo, dest: Path) -> None:
        async with sem:
            await _download(client, info, dest)

    await asyncio.gather(*(fetch(f, p) for f, p in zip(files, paths, strict=True)))


async def _fetch_plan(
    client: ReplicaClient, work: Path, txid: int | None, timestamp: datetime | None, parallelism: int
) -> tuple[list[FileInfo], list[Path]]:
    """Plan and download. A file deleted between listing and download (retention or compaction of
    a running agent) makes the plan stale, not the restore impossible: plan again."""
    for attempt in range(REPLAN_ATTEMPTS):
        levels = await list_levels(client, use_metadata=timestamp is not None)
        files = plan(levels, txid=txid, timestamp=timestamp)
        paths = [work / f"{i:06d}-{f.level}-{f.name}" for i, f in enumerate(files)]
        try:
            await _download_all(client, files, paths, parallelism)
            return files, paths
        except NotFound:
            if attempt == REPLAN_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _remove(path: Path) -> None:
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
