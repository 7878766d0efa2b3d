"""`Replica`: ships a database's local L0 files to one `ReplicaClient` and tracks the remote position."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime

from .db import Database, DatabaseError
from .storage import SNAPSHOT_LEVEL, FileInfo, ReplicaClient, StorageError
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

    @property
    def url(self) -> str:
        return repr(self.client)

    async def init(self) -> None:
        """Reach the store and learn the remote position (the newest TXID of any level)."""
        await self.client.init()
        self.held_at_open = await self.holdings()
        self.pos = self.held_at_open.position

    async def holdings(self) -> Holdings:
        """What every level of the replica holds now (one listing of each)."""
        max_txids: dict[int, int] = {}
        newest = None
        for level in range(SNAPSHOT_LEVEL + 1):
            files = await self.client.ltx_files(level)
            if files:
                max_txids[level] = max(f.max_txid for f in files)
            if files and level == SNAPSHOT_LEVEL:
                newest = files[-1].created_at  # listings are in TXID order: the newest snapshot
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
                self.pos = txid
                self.stats.uploads += 1
                self.stats.bytes += info.size
                self.stats.last_upload = time.time()
                uploaded.append(info)
            self.stats.last_error = None
            return uploaded

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
