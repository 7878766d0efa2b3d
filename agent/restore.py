"""Restore: plan which replica files rebuild the database, fetch them in parallel, apply, verify.

Files are applied in plan order while later ones still download (`restore_fetch`). The output is
assembled in `<out>.tmp`, checked (every input's checksum, TXID contiguity, pages
1..Commit all present, optionally `PRAGMA integrity_check`), fsynced and renamed: a failed restore
never leaves a database behind, and never touches the one already there. What happens to an
existing output (`IfExists`) is decided here, for every caller: the CLI, the restore init container
and the in-place restore Job.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from . import ltx, restore_v3
from .progress import Transfer
from .restore_errors import NoBackupError, OutputExistsError, RestoreError, UnservableTargetError
from .restore_fetch import (
    DOWNLOAD_ATTEMPTS,
    DOWNLOAD_BACKOFF,
    DOWNLOAD_BACKOFF_CAP,
    Fetcher,
    Report,
    fetch_range,
    file_name,
)
from .sqlite import lock_pgno
from .storage import SNAPSHOT_LEVEL, FileInfo, NotFound, ReplicaClient, format_timestamp, ltx_files_by_level
from .storage.file import fsync_dir
from .storage.retry import retry

log = logging.getLogger("lifeboat")

MAX_LEVEL = SNAPSHOT_LEVEL
REPLAN_ATTEMPTS = 3
# A snapshot's pages come in order: writing runs of them with one pwritev each saves a system call
# per page. 256 pages stay within IOV_MAX (1024) and bound what is held at once.
WRITE_RUN_PAGES = 256

class IfExists(enum.Enum):
    """What a restore does when its output already exists."""

    FAIL = "fail"  # refuse (the default)
    SKIP = "skip"  # -if-db-not-exists: keep it, restore nothing
    REPLACE = "replace"  # -force: replace it, and its -wal/-shm/-journal, by the final rename


# Files SQLite reads beside a database: a -wal is applied and a hot -journal rolled back whatever
# database wrote them, so none may outlive the database they belong to.
SIDECARS = ("-wal", "-shm", "-journal")


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
        if not any(levels.values()):
            raise NoBackupError("no matching backup files available: the replica holds no files")
        if txid is not None:
            point = f"txid {txid:016x}"
        elif timestamp is not None:
            point = f"timestamp {format_timestamp(timestamp)}"
        else:
            raise RestoreError("no snapshot to start from: no file begins at txid 1")
        raise UnservableTargetError(f"no matching backup files available for {point}: {restorable_range(levels)}")
    if chosen[0].min_txid != 1:
        raise RestoreError(f"no snapshot to start from: the first file is {chosen[0].name} (level {chosen[0].level})")
    return chosen


def restorable_range(levels: dict[int, list[FileInfo]]) -> str:
    """The earliest and latest point the replica can restore, in words: TXIDs and creation times."""
    starts = [f for files in levels.values() for f in files if f.min_txid == 1]
    if not starts:
        return "the replica holds no snapshot to start from"
    try:
        last = plan(levels)[-1]
    except RestoreError as exc:
        return f"the replica cannot restore its latest state ({exc})"
    first_txid = min(f.max_txid for f in starts)
    first_time = min(f.created_at for f in starts)
    return (
        f"the replica can restore from txid {first_txid:016x} (created {format_timestamp(first_time)}) "
        f"to txid {last.max_txid:016x} (created {format_timestamp(last.created_at)})"
    )


async def list_levels(client: ReplicaClient, use_metadata: bool = False) -> dict[int, list[FileInfo]]:
    """Every level's files, retried with backoff on transient errors: in one listing where the store
    allows it (`ltx_files_by_level`); level by level, all at once, when the creation times must come
    from each object's metadata."""
    retried = functools.partial(retry, attempts=DOWNLOAD_ATTEMPTS, base=DOWNLOAD_BACKOFF, cap=DOWNLOAD_BACKOFF_CAP)
    if not use_metadata:
        return await retried(lambda: ltx_files_by_level(client))
    levels = range(MAX_LEVEL + 1)
    results = await asyncio.gather(*(retried(lambda lvl=lvl: client.ltx_files(lvl, 0, True)) for lvl in levels))
    return {lvl: files for lvl, files in zip(levels, results, strict=True) if files}


async def download(client: ReplicaClient, info: FileInfo, dest: Path, transfer: Transfer, report: Report) -> None:
    """Fetch one replica file into `dest` with one GET, resumed by range and retried (`fetch_range`)."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        size = await fetch_range(client, info, fd, 0, None, transfer, report)
    finally:
        os.close(fd)
    if size != info.size and info.size:
        raise RestoreError(f"{file_name(info)}: downloaded {size} bytes, listing says {info.size}")
    transfer.files += 1
    report(transfer)


class _Applier:
    """Writes files' pages into `out`, one file at a time in plan order (newest wins), checking
    each file against the ones before; `finish` checks pages 1..Commit are all there."""

    def __init__(self, out: Path, files: list[FileInfo]) -> None:
        self.page_size = 0
        self.commit = 0
        self.prev_max = 0
        self.present = bytearray()
        # A header's commit sizes the page bitmap: it must be one these files can physically back
        # (each stored page costs at least its header, size and LZ4 output), or a forged header
        # would make restore allocate (and scan) gigabytes. Downloads are checked against the
        # listing's sizes; a file listed without one counts by its downloaded size once applied.
        self.total_bytes = sum(f.size for f in files)
        self.fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    def apply(self, info: FileInfo, path: Path) -> None:
        """Write the pages of `info`, downloaded at `path`."""
        name = file_name(info)
        if not info.size:
            self.total_bytes += os.path.getsize(path)
        with open(path, "rb", buffering=1 << 20) as f:
            dec = ltx.Decoder(f, name)
            h = dec.header
            if (h.min_txid, h.max_txid) != (info.min_txid, info.max_txid):
                raise RestoreError(f"{name}: header says txids {h.min_txid}-{h.max_txid}")
            if self.page_size and h.page_size != self.page_size:
                raise RestoreError(f"{name}: page size {h.page_size} differs from {self.page_size}")
            if self.prev_max and not (h.min_txid <= self.prev_max + 1 and h.max_txid > self.prev_max):
                raise RestoreError(f"{name}: not contiguous with txid {self.prev_max}")
            page_size = self.page_size = h.page_size
            self.commit = h.commit
            if self.commit > self.total_bytes // (8 + page_size // 512) + 2:
                raise RestoreError(
                    f"{name}: header claims {self.commit} pages of {page_size} bytes, more than the "
                    f"{self.total_bytes} bytes of replica files can hold"
                )
            if len(self.present) < self.commit + 1:
                self.present.extend(bytes(self.commit + 1 - len(self.present)))
            run: list[bytes] = []  # consecutive pages, written with one pwritev
            first = 0
            for pgno, data in dec.pages():
                if run and (pgno != first + len(run) or len(run) == WRITE_RUN_PAGES):
                    os.pwritev(self.fd, run, (first - 1) * page_size)
                    run.clear()
                if not run:
                    first = pgno
                run.append(data)
                self.present[pgno] = 1
            if run:  # before the next file, whose pages may overwrite these
                os.pwritev(self.fd, run, (first - 1) * page_size)
            self.prev_max = h.max_txid

    def finish(self) -> int:
        """Check every page is present, size and fsync the file; returns the final commit."""
        lock = lock_pgno(self.page_size)
        missing = [p for p in range(1, self.commit + 1) if not self.present[p] and p != lock][:5]
        if missing:
            raise RestoreError(f"restored database lacks pages {missing} (of 1..{self.commit})")
        os.ftruncate(self.fd, self.commit * self.page_size)
        os.fsync(self.fd)
        return self.commit

    def close(self) -> None:
        os.close(self.fd)


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


def check_output(out: Path, if_exists: IfExists) -> bool:
    """Whether a restore into `out` goes ahead under `if_exists` (False: skip it, the database
    exists). Raises OutputExistsError when the policy forbids it.

    A -wal, -shm or -journal beside a missing database is refused, not removed: nothing proves
    whose it is (it may hold the only copy of commits of a database deleted by hand), and left in
    place SQLite would apply it to the restored file. Only -force (REPLACE) removes it, as it
    would the database's own.
    """
    if os.path.lexists(out):
        if if_exists is IfExists.FAIL:
            raise OutputExistsError(f"output database already exists: {out} (use -force to overwrite)")
        return if_exists is IfExists.REPLACE
    if if_exists is not IfExists.REPLACE:
        for suffix in SIDECARS:
            if os.path.lexists(f"{out}{suffix}"):
                raise OutputExistsError(
                    f"{out}{suffix} exists but {out} does not: SQLite would apply it to the restored "
                    "database; remove it, or restore with -force"
                )
    if not out.parent.is_dir():
        raise RestoreError(f"output directory does not exist: {out.parent}")
    return True


async def restore(
    client: ReplicaClient,
    output: str,
    *,
    txid: int | None = None,
    timestamp: datetime | None = None,
    parallelism: int = 8,
    integrity_check: str = "none",
    if_exists: IfExists = IfExists.FAIL,
    progress: Report | None = None,
    before_install: Callable[[Path, int], None] | None = None,
    legacy_v3: bool = True,
) -> RestoreResult | None:
    """Restore the replica into `output`: latest, or as of txid/timestamp.

    An existing output is handled per `if_exists` (None: skipped). Whatever the policy, an existing
    database is only ever replaced by the final rename of a verified restore: any failure before
    leaves it, and its -wal/-shm, as they were. `progress` is called as the downloads advance;
    `before_install(file, txid)` on the verified file just before it takes the output's name. A latest-state
    restore reads a Litestream 0.3 backup instead when it is newer than the LTX files, unless
    `legacy_v3` is false.
    """
    out = Path(output).absolute()
    if not check_output(out, if_exists):
        return None
    tmp = out.with_name(out.name + ".tmp")
    with tempfile.TemporaryDirectory(prefix=".lifeboat-restore-", dir=out.parent) as work:
        legacy = await _newer_v3(client) if legacy_v3 and txid is None and timestamp is None else None
        try:
            if legacy is None:
                report = progress or _quiet
                files = await _fetch_and_apply(client, Path(work), tmp, txid, timestamp, parallelism, report)
                result = RestoreResult(str(out), files[-1].max_txid, files[-1].created_at, len(files), "")
            else:
                log.info("restoring from the Litestream 0.3 backup (newer than any LTX file)")
                used = restore_v3.needed(*legacy)
                local = await _fetch_v3(client, used, Path(work), parallelism)
                await asyncio.to_thread(restore_v3.rebuild, legacy[0], legacy[1], tmp, local)
                result = RestoreResult(str(out), 0, max(f.created_at for f in used), len(used), "")
            check = await asyncio.to_thread(_integrity_check, tmp, integrity_check)
            if check not in ("ok", "skipped"):
                raise RestoreError(f"{out}: integrity check failed: {check}")
            if before_install is not None:
                await asyncio.to_thread(before_install, tmp, result.txid)
            # Again: the output may have appeared during the download.
            if not check_output(out, if_exists):
                _remove(tmp)
                return None
            _install(tmp, out, Path(work))
        except restore_v3.V3Error as exc:
            _remove(tmp)
            raise RestoreError(f"{client!r}: {exc}") from None
        except (ltx.LTXError, sqlite3.DatabaseError) as exc:
            _remove(tmp)
            raise RestoreError(str(exc)) from None
        except BaseException:
            _remove(tmp)
            raise
    return dataclasses.replace(result, integrity_check=check)


async def _newer_v3(client: ReplicaClient) -> tuple[restore_v3.V3File, list[restore_v3.V3File]] | None:
    """The newest 0.3 snapshot and the WAL segments, when the replica holds a 0.3 backup written
    after its newest LTX file (Litestream's choice for a restore of the latest state)."""
    if not isinstance(client, restore_v3.V3Readable):
        return None
    entries = await retry(client.v3_files, attempts=DOWNLOAD_ATTEMPTS, base=DOWNLOAD_BACKOFF, cap=DOWNLOAD_BACKOFF_CAP)
    snapshots, segments = restore_v3.classify(entries)
    v3_time = restore_v3.updated_at(snapshots, segments)
    if v3_time is None or not snapshots:
        return None
    levels = await list_levels(client)
    ltx_time = max((f.created_at for files in levels.values() for f in files), default=None)
    if ltx_time is not None and ltx_time >= v3_time:
        return None
    return max(snapshots, key=lambda f: f.created_at), segments


async def _fetch_v3(
    client: restore_v3.V3Readable, files: list[restore_v3.V3File], work: Path, parallelism: int
) -> dict[str, Path]:
    """Download the 0.3 files a rebuild applies into `work`; each key maps to its copy."""
    sem = asyncio.Semaphore(max(1, parallelism))
    local = {f.key: work / f"v3-{i:06d}" for i, f in enumerate(files)}

    async def fetch(f: restore_v3.V3File) -> None:
        async def attempt() -> int:
            with open(local[f.key], "wb") as out:
                async for chunk in client.open_v3_file(f.key):
                    out.write(chunk)
                return out.tell()

        async with sem:
            size = await retry(attempt, attempts=DOWNLOAD_ATTEMPTS, base=DOWNLOAD_BACKOFF, cap=DOWNLOAD_BACKOFF_CAP)
        if size != f.size:
            raise restore_v3.V3Error(f"{f.key}: downloaded {size} bytes, listing says {f.size}")

    results = await asyncio.gather(*(fetch(f) for f in files), return_exceptions=True)
    for result in results:  # every download ends before the work directory is removed
        if isinstance(result, BaseException):
            raise result
    return local


def _install(tmp: Path, out: Path, aside: Path) -> None:
    """Rename the verified `tmp` to `out`, replacing `out` and leaving none of its -wal/-shm/-journal.

    Order matters. SQLite applies a -wal (and rolls back a hot -journal) found beside a database
    whichever database wrote it, so the old ones must be gone before the new file takes the name:
    the other way round, a crash or an app opening the file between the two steps would mix the old
    WAL's pages into the restored ones. They are moved aside into the restore's work directory
    (a rename on the same filesystem), not deleted: a crash between the two renames leaves the old
    database and, in the work directory, its WAL, so nothing is lost and nothing mixed; a failed
    final rename puts them back. Everything else that can fail (download, checksums, integrity)
    is over by now.
    """
    moved: list[tuple[Path, Path]] = []
    try:
        for suffix in SIDECARS:
            sidecar = Path(f"{out}{suffix}")
            if os.path.lexists(sidecar):
                os.replace(sidecar, aside / sidecar.name)
                moved.append((aside / sidecar.name, sidecar))
        with contextlib.suppress(FileNotFoundError):
            shutil.copymode(out, tmp)  # the replaced database's permissions
        os.replace(tmp, out)
    except BaseException:
        for parked, sidecar in reversed(moved):
            os.replace(parked, sidecar)
        raise
    fsync_dir(out.parent)


async def _fetch_and_apply(
    client: ReplicaClient,
    work: Path,
    tmp: Path,
    txid: int | None,
    timestamp: datetime | None,
    parallelism: int,
    report: Report,
) -> list[FileInfo]:
    """Plan, then apply the plan's files into `tmp` while later ones download; returns the plan.
    A file deleted between listing and download (retention or compaction of a running agent)
    makes the plan stale, not the restore impossible: plan again, and apply from the start."""
    for attempt in range(REPLAN_ATTEMPTS):
        levels = await list_levels(client, use_metadata=timestamp is not None)
        files = plan(levels, txid=txid, timestamp=timestamp)
        try:
            await _apply_plan(client, files, work, tmp, parallelism, report)
            return files
        except NotFound:
            if attempt == REPLAN_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def _apply_plan(
    client: ReplicaClient, files: list[FileInfo], work: Path, tmp: Path, parallelism: int, report: Report
) -> None:
    applier = _Applier(tmp, files)
    try:
        async with Fetcher(client, files, work, parallelism, report) as fetcher:
            for i, info in enumerate(files):
                path = await fetcher.ready(i)
                await asyncio.to_thread(applier.apply, info, path)
                await fetcher.release(i)
        await asyncio.to_thread(applier.finish)
    finally:
        applier.close()


def _quiet(_: Transfer) -> None:
    pass


def _remove(path: Path) -> None:
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
