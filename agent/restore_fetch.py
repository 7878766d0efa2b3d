"""Fetching a restore plan's files: up to `parallelism` GETs at once, each file handed to the
applier, in plan order, as soon as it is complete, while later files still download.

A large file is fetched as ranged parts in parallel (where the backend reads a range without
streaming the object from its start). Files go to the restore's work directory, never into memory,
and only a bounded window of them runs ahead of the applier: a file starts downloading once fewer
than `window` files (and, beyond the one the applier waits for, fewer than `AHEAD_BYTES` bytes of
them) are downloading or downloaded but not yet applied. An applied file is deleted at once, so
the work directory holds the window, never the replica.

Every GET resumes by range where its stream broke, and is retried with backoff when it failed
without progress (`fetch_range`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .progress import Transfer
from .restore_errors import RestoreError
from .storage import FileInfo, ReplicaClient, Transient
from .storage.retry import retry

log = logging.getLogger("lifeboat")
Report = Callable[[Transfer], None]

# -parallelism: GETs at once. Each runs in a worker thread of the blocking SDKs, so it is bounded.
MAX_PARALLELISM = 64
# A file larger than this is fetched as ranged GETs of this size, in parallel.
PART_SIZE = 16 << 20
# Files running ahead of the applier: per GET allowed at once, and in bytes (beyond the file the
# applier waits for, which always may download whatever its size).
AHEAD_PER_GET = 4
AHEAD_BYTES = 256 << 20
# A download that fails without progress: tries, and the full-jitter backoff between them (at most
# about 15 s of waiting in all, on top of what a backend's SDK retries by itself).
DOWNLOAD_ATTEMPTS = 5
DOWNLOAD_BACKOFF = 0.5
DOWNLOAD_BACKOFF_CAP = 8.0


def threads_for(parallelism: int) -> int:
    """Worker threads a restore with `parallelism` GETs needs: one per GET, plus the applier's and
    a few for listings (asyncio's default pool, CPUs + 4, would cap the GETs on a small machine)."""
    return max(parallelism + 4, min(32, (os.cpu_count() or 1) + 4))


def file_name(info: FileInfo) -> str:
    """How errors and logs name a replica file."""
    return f"level {info.level} file {info.name}"


async def fetch_range(
    client: ReplicaClient, info: FileInfo, fd: int, offset: int, size: int | None, transfer: Transfer, report: Report
) -> int:
    """Write bytes `offset`.. of `info` (`size` of them, or to the end) at the same offsets of `fd`;
    returns how many were written. A broken stream resumes by range where it stopped (at once: it
    made progress); a failure with no progress is retried with backoff, and surfaces when the tries
    run out. One reset connection costs one request, never the download before it."""
    done = 0

    async def rest() -> bool:
        nonlocal done
        start = done
        left = None if size is None else size - done
        try:
            async for chunk in client.open_ltx_file(info.level, info.min_txid, info.max_txid, offset + done, left):
                os.pwrite(fd, chunk, offset + done)
                done += len(chunk)
                transfer.bytes += len(chunk)
                report(transfer)
        except Transient as exc:
            if done == start:
                raise
            log.warning("%s: %s; resuming at byte %d", file_name(info), exc, offset + done)
            return False
        # A stream that ended early without an error (a proxy closing cleanly) resumes too.
        end = size if size is not None else (info.size - offset if info.size else None)
        return not (end is not None and start < done < end)

    while not await retry(rest, attempts=DOWNLOAD_ATTEMPTS, base=DOWNLOAD_BACKOFF, cap=DOWNLOAD_BACKOFF_CAP):
        pass
    return done


@dataclass(frozen=True, slots=True)
class _Part:
    file: int  # index in the plan
    offset: int
    size: int | None  # None: to the end of the file (the last part, which also finds a longer file)


def split(info: FileInfo, part_size: int) -> list[tuple[int, int | None]]:
    """(offset, size) of the ranged GETs that fetch `info`; one open-ended GET when it is small or
    its size unknown."""
    if not info.size or info.size <= part_size:
        return [(0, None)]
    starts = range(0, info.size, part_size)
    return [(o, part_size) for o in starts[:-1]] + [(starts[-1], None)]


class Fetcher:
    """Downloads a plan's files into `work` with `parallelism` GETs; see the module docstring.

    Use as `async with`: `ready(i)` waits for file i (raising the first download error, which
    stops the rest), `release(i)` deletes it once applied and lets later files start. Leaving the
    block waits for the downloads under way (cancels them if the restore itself was cancelled).
    """

    def __init__(
        self,
        client: ReplicaClient,
        files: list[FileInfo],
        work: Path,
        parallelism: int,
        report: Report,
        *,
        window: int | None = None,
        part_size: int | None = None,
    ) -> None:
        self.client = client
        self.files = files
        self.report = report
        self.parallelism = max(1, parallelism)
        self.window = max(1, window if window is not None else AHEAD_PER_GET * self.parallelism)
        # A backend that streams an object from its start for any range gains nothing from parts.
        sequential = getattr(client, "sequential_ranges", False)
        size = part_size or PART_SIZE
        self.paths = [work / f"{i:06d}-{f.level}-{f.name}" for i, f in enumerate(files)]
        self._parts = [
            _Part(i, o, s) for i, f in enumerate(files) for o, s in (split(f, size) if not sequential else [(0, None)])
        ]
        self._left = [0] * len(files)  # parts not yet done, per file
        for part in self._parts:
            self._left[part.file] += 1
        self._written = [0] * len(files)
        self._next_part = 0
        self._released = 0  # files applied and deleted: the applier waits for this one
        self._started = 0  # files admitted (their first part may run)
        self._gate = asyncio.Condition()
        self._ready = [asyncio.Event() for _ in files]
        self._failed = asyncio.Event()
        self._error: BaseException | None = None
        self._stopped = False
        self._workers: list[asyncio.Task[None]] = []
        self.transfer = Transfer(len(files), sum(f.size for f in files))
        self.high_water = 0  # the most files admitted and not yet released at any one time

    async def __aenter__(self) -> Fetcher:
        self.report(self.transfer)
        self._workers = [asyncio.ensure_future(self._work()) for _ in range(min(self.parallelism, len(self._parts)))]
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        async with self._gate:
            self._stopped = True
            self._gate.notify_all()
        if kind is not None and issubclass(kind, asyncio.CancelledError | KeyboardInterrupt):
            for task in self._workers:
                task.cancel()
        # Every download ends before the work directory is reused by a new plan or removed.
        await asyncio.gather(*self._workers, return_exceptions=True)
        for path in self.paths:
            path.unlink(missing_ok=True)

    async def ready(self, i: int) -> Path:
        """The path of file i once it is completely downloaded."""
        waiter = asyncio.ensure_future(self._ready[i].wait())
        failure = asyncio.ensure_future(self._failed.wait())
        try:
            await asyncio.wait([waiter, failure], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            failure.cancel()
        if self._error is not None:
            raise self._error
        return self.paths[i]

    async def release(self, i: int) -> None:
        """File i is applied: delete it and let the window move on."""
        self.paths[i].unlink(missing_ok=True)
        async with self._gate:
            self._released = i + 1
            self._gate.notify_all()

    def _may_start(self, file: int) -> bool:
        """Whether a part of `file` may download now (the window), or must stop (a failure)."""
        if self._stopped or file < self._started:
            return True
        if file == self._released:
            return True
        ahead = self.files[self._released + 1 : file + 1]
        return file - self._released < self.window and sum(f.size for f in ahead) <= AHEAD_BYTES

    async def _work(self) -> None:
        while True:
            async with self._gate:
                if self._stopped or self._next_part == len(self._parts):
                    return
                part = self._parts[self._next_part]
                self._next_part += 1
                await self._gate.wait_for(functools.partial(self._may_start, part.file))
                if self._stopped:
                    return
                self._started = max(self._started, part.file + 1)
                self.high_water = max(self.high_water, self._started - self._released)
            try:
                await self._fetch(part)
            except Exception as exc:
                await self._fail(exc)
                return

    async def _fetch(self, part: _Part) -> None:
        info = self.files[part.file]
        path = self.paths[part.file]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            got = await fetch_range(self.client, info, fd, part.offset, part.size, self.transfer, self.report)
        finally:
            os.close(fd)
        if part.size is not None and got != part.size:
            raise RestoreError(
                f"{file_name(info)}: bytes {part.offset}-{part.offset + part.size - 1} came back as {got} bytes"
            )
        self._written[part.file] += got
        self._left[part.file] -= 1
        if self._left[part.file] == 0:
            size = self._written[part.file]
            if info.size and size != info.size:
                raise RestoreError(f"{file_name(info)}: downloaded {size} bytes, listing says {info.size}")
            self.transfer.files += 1
            self.report(self.transfer)
            self._ready[part.file].set()

    async def _fail(self, exc: BaseException) -> None:
        async with self._gate:
            if self._error is None:
                self._error = exc
            self._stopped = True
            self._gate.notify_all()
        self._failed.set()
