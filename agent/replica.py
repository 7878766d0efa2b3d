"""`Replica`: ships a database's local L0 files to one `ReplicaClient` and tracks the remote position."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from .db import Database, DatabaseError, SyncResult
from .storage import (
    SNAPSHOT_LEVEL,
    FileInfo,
    ReplicaClient,
    SealedWriter,
    StorageError,
    ltx_files_by_level,
    sealed_writer,
)
from .storage.file import SealedFile

log = logging.getLogger("lifeboat.replica")


@dataclass
class UploadStats:
    """Counters the metrics and `/status` read."""

    uploads: int = 0
    bytes: int = 0
    errors: int = 0
    last_upload: float | None = None  # wall clock
    last_error: str | None = None


@dataclass(frozen=True)
class Holdings:
    """What the replica held when it was opened: the newest TXID of each level (a level missing
    here is empty) and when its newest snapshot was taken. Learnt from the listing of every level
    that finds the replica's position, so the lifecycle can skip startup work it shows is done."""

    max_txids: dict[int, int] = field(default_factory=dict)
    newest_snapshot: datetime | None = None

    @property
    def position(self) -> int:
        """The newest TXID of any level."""
        return max(self.max_txids.values(), default=0)

    def max_txid(self, level: int) -> int:
        """The newest TXID of `level` (0: empty)."""
        return self.max_txids.get(level, 0)


class Replica:
    """The remote copy of one database."""

    def __init__(self, db: Database, client: ReplicaClient, *, sync_interval: float = 1.0) -> None:
        self.db = db
        self.client = client
        self.sync_interval = sync_interval
        self.pos = 0  # highest L0 TXID known to be durable in the replica
        self.stats = UploadStats()
        self.committed_at: dict[int, float] = {}  # txid -> when its L0 file was written (lag metric)
        self.held_at_open: Holdings | None = None  # set by `init`
        self._lock = asyncio.Lock()
        self._sealed_writer = sealed_writer(client)

    @property
    def url(self) -> str:
        return repr(self.client)

    async def init(self) -> None:
        """Learn the remote position (the newest TXID of any level). The client is initialised by
        the caller, before it takes the lease: a second probe of the store would be a wasted request
        per database at start-up."""
        self.held_at_open = await self.holdings()
        self.pos = self.held_at_open.position

    async def holdings(self) -> Holdings:
        """What every level of the replica holds now (see `ltx_files_by_level`: one listing of the
        whole replica where the store allows it)."""
        by_level = await ltx_files_by_level(self.client)
        max_txids = {level: max(f.max_txid for f in files) for level, files in by_level.items()}
        snapshots = by_level.get(SNAPSHOT_LEVEL)
        newest = snapshots[-1].created_at if snapshots else None  # listings are in TXID order
        return Holdings(max_txids, newest)

    async def remote_max_txid(self) -> int:
        """The replica's newest TXID, over every level.

        L0 alone is not enough: a compacted level or a snapshot can end above it (the L0 file of a
        snapshot's own sync may never have shipped), and an agent that continued from L0's end would
        write TXIDs the replica already holds with other contents.
        """
        return (await self.holdings()).position

    async def sync(self) -> list[FileInfo]:
        """Upload every local L0 file above the remote position, in TXID order."""
        async with self._lock:
            uploaded: list[FileInfo] = []
            if self.pos == 0:
                # A fresh replica: start at the oldest local file (one directory scan, once).
                first = next(iter(self.db.local_l0_txids()), self.db.pos + 1)
            else:
                first = self.pos + 1
            for txid in range(first, self.db.pos + 1):
                if not self.db.l0_path(txid).exists():
                    raise DatabaseError(
                        f"{self.db.path}: local L0 file for txid {txid} is missing; "
                        "run `lifeboat reset` on this database"
                    )
                path = self.db.l0_path(txid)
                with SealedFile(path) as f:
                    info = await self.client.write_ltx_file(0, txid, txid, f)
                self._shipped(info)
                uploaded.append(info)
            self.stats.last_error = None
            return uploaded

    async def sync_and_ship(self, sync: Callable[[], SyncResult]) -> SyncResult:
        """Run `sync` (a capture: blocking, it writes L0 files) in a worker thread, and ship what it
        wrote in that same thread call when this replica takes sealed local files from the caller's
        thread (see `storage.sealed_writer`), holds everything before them, and no upload is under
        way: one thread hand-off per capture instead of two. Files it does not ship (no such
        writer, one it declines, a failure) are `sync`'s, which the caller's upload job runs,
        retries and reports."""
        writer = self._sealed_writer
        if writer is None or self.pos == 0 or self.pos != self.db.pos or self._lock.locked():
            return await asyncio.to_thread(sync)
        async with self._lock:  # free, and taken before any await: no upload starts meanwhile
            result, shipped = await asyncio.to_thread(self._sync_then_ship, sync, writer)
            for info in shipped:
                self._shipped(info)
        return result

    def _sync_then_ship(
        self, sync: Callable[[], SyncResult], writer: SealedWriter
    ) -> tuple[SyncResult, list[FileInfo]]:
        result = sync()
        shipped: list[FileInfo] = []
        try:
            # `pos` cannot move meanwhile (the lock is held) and the database's only moved by `sync`.
            for txid in range(self.pos + 1, self.db.pos + 1):
                info = writer(0, txid, txid, self.db.l0_path(txid))
                if info is None:
                    break
                shipped.append(info)
        except (StorageError, OSError):
            pass  # `sync` retries it (settling a name that exists, refusing without the lease) and reports
        return result, shipped

    def _shipped(self, info: FileInfo) -> None:
        self.pos = info.max_txid
        self.stats.uploads += 1
        self.stats.bytes += info.size
        self.stats.last_upload = time.time()

    async def sync_with_retry(
        self, stop: asyncio.Event | None = None, deadline: float | None = None, interval: float | None = None
    ) -> None:
        """`sync`, retrying failures until it succeeds: every `interval` seconds when given (the
        final sync's `shutdown-sync-interval`), otherwise with exponential backoff and full jitter."""
        delay = 0.05 if interval is None else interval
        while True:
            try:
                await self.sync()
                return
            except (StorageError, OSError) as exc:
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("replica %s: upload failed, retrying: %s", self.url, exc)
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise
                if stop is not None and stop.is_set():
                    raise
                if interval is not None:
                    await asyncio.sleep(interval)
                    continue
                await asyncio.sleep(random.uniform(0, delay))
                delay = min(delay * 2, 10.0)
