"""`Store`: the databases of one agent process, each followed and shipped by its own pair of tasks.

Per database, one task turns WAL changes into L0 files (woken by inotify on the database's
directory, with a cheap stat poll every `monitor-interval` as a fallback) and one task uploads them,
so a slow or failing store never stops local capture, and local capture never waits for uploads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .aio import run_until
from .compaction import Lifecycle, LifecycleSettings
from .db import Database, DatabaseOptions, SyncResult
from .lease import FencedClient, Lease
from .replica import Replica
from .storage import ReplicaClient, StorageError, format_timestamp

log = logging.getLogger("lifeboat.store")

Hook = Callable[[str, dict[str, Any]], None]
# A writer publishes its commit in the wal-index microseconds after its last WAL write (the inotify
# event); these delays cover a preempted writer too, before the stat poll takes over.
UNPUBLISHED_RECHECKS = (0.002, 0.008, 0.032, 0.128)
INOTIFY_EVENT = struct.Struct("=iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
IN_Q_OVERFLOW = 0x4000
INOTIFY_READ_SIZE = 64 * 1024


@dataclass
class DatabaseSpec:
    """What the store needs to replicate one database."""

    path: str
    client: ReplicaClient
    options: DatabaseOptions = field(default_factory=DatabaseOptions)
    monitor_interval: float = 1.0
    sync_interval: float = 1.0
    lifecycle: LifecycleSettings | None = None
    replica_settings: dict[str, Any] = field(default_factory=dict)  # what the client was built from


class DatabaseRunner:
    """Follows one database and ships it to its replica."""

    def __init__(self, spec: DatabaseSpec, hook: Hook | None = None) -> None:
        self.spec = spec
        self.db = Database(spec.path, spec.options)
        self.lease = Lease(spec.client)
        # Every writer of the replica (uploads, compaction, snapshots, retention) goes through the fence.
        client = FencedClient(spec.client, self.lease)
        self.replica = Replica(self.db, client, sync_interval=spec.sync_interval)
        self.hook = hook or (lambda event, fields: None)
        self.lifecycle = (
            Lifecycle(self.db, client, spec.lifecycle, self.hook) if spec.lifecycle is not None else None
        )
        self.last_sync: float | None = None
        self.paused = False
        self.last_error: str | None = None
        self.seen_at: dict[int, float] = {}
        self._changed = asyncio.Event()
        self._new_ltx = asyncio.Event()
        self._shipped = asyncio.Event()
        self._lock = asyncio.Lock()
        # Object stores bill per request: at most one L0 per sync-interval, the first change after a
        # quiet period immediately. A directory replica ships every change at once.
        self._min_gap = 0.0 if spec.client.type == "file" else spec.sync_interval
        self._last_capture = 0.0
        self._rechecks = 0
        self._disk_full = False

    async def open(self) -> None:
        """Take the replica's lease, open the database, and reconcile their positions."""
        await asyncio.to_thread(self.db.validate)  # a bad database must not touch the replica
        await self.replica.client.init()
        # A lease left by a previous container of this pod is waited out, not a reason to crash-loop.
        await self.lease.acquire(patience=self.lease.ttl)
        await asyncio.to_thread(self.db.open)
        await self.replica.init()
        if self.replica.pos > self.db.pos:
            log.info(
                "%s: replica is at txid %d, local at %d; continuing above the replica",
                self.db.path,
                self.replica.pos,
                self.db.pos,
            )
            await asyncio.to_thread(self.db.set_replica_position, self.replica.pos)

    async def capture(self) -> SyncResult:
        """One sync of the WAL into L0 files, then a checkpoint if the policy says so."""
        async with self._lock:
            seen = time.time()
            t_sync = time.monotonic()
            result = await asyncio.to_thread(self.db.sync)
            sync_seconds = time.monotonic() - t_sync
            mode = self.db.checkpoint_mode_due()
            if mode is not None:
                t0 = time.monotonic()
                try:
                    more = await asyncio.to_thread(self.db.checkpoint, mode)
                except Exception as exc:
                    self.hook("checkpoint_error", {"db": self.db.path, "mode": mode, "error": str(exc)})
                    raise
                result.txids += more.txids
                self.hook("checkpoint", {"db": self.db.path, "mode": mode, "seconds": time.monotonic() - t0})
            for txid in result.txids:
                self.seen_at[txid] = seen
            if result.txids:
                self.last_sync = time.time()
                self._new_ltx.set()
                self.hook(
                    "sync",
                    {
                        "db": self.db.path,
                        "txids": result.txids,
                        "wal_bytes": result.wal_bytes,
                        "snapshot": result.snapshot,
                        "seconds": sync_seconds,
                    },
                )
            return result

    async def upload(self, stop: asyncio.Event | None = None, deadline: float | None = None) -> None:
        """Ship every local L0 file the replica lacks (retrying transient failures)."""
        before = self.replica.pos
        await self.replica.sync_with_retry(stop, deadline)
        if self.replica.pos:
            self._shipped.set()
        now = time.time()
        for txid in range(before + 1, self.replica.pos + 1):
            seen = self.seen_at.pop(txid, None)
            if seen is not None:
                self.hook(
                    "uploaded",
                    {"db": self.db.path, "txid": txid, "lag": now - seen, "replica_type": self.replica.client.type},
                )

    async def run(self, stop: asyncio.Event) -> None:
        """Capture and upload until `stop` is set, then a final sync."""
        loops = [self._capture_loop(stop), self._upload_loop(stop), self._watch(stop), self._poll(stop),
                 self.lease.keep(stop)]
        if self.lifecycle is not None:
            loops.append(self._lifecycle(stop))
        await run_until(stop, loops)

    async def final_sync(self, timeout: float) -> None:
        """Capture what the application committed last and make it durable in the replica."""
        await self.capture()
        await self.upload(deadline=time.monotonic() + timeout)

    @property
    def lost_lease(self) -> bool:
        """The lease was taken over, or its renewal broke: this database stopped replicating."""
        return self.lease.lost is not None

    async def shutdown(self, timeout: float) -> None:
        """Final sync (only with the lease proven ours afresh), release the lease, close."""
        try:
            if not self.lost_lease and self.db.pos:
                # Another agent may have taken over since the last renewal: our tail is not its history.
                await self.lease.renew()
                await self.final_sync(timeout)
        except Exception as exc:  # report every database's failure, not just the first
            log.error("%s: final sync failed: %s", self.db.path, exc)
        try:
            await self.lease.release()
        except StorageError as exc:
            log.warning("replica %s: lease release failed: %s", self.replica.url, exc)
        await self.replica.client.close()
        self.db.close()

    async def _lifecycle(self, stop: asyncio.Event) -> None:
        assert self.lifecycle is not None
        # Compaction reads remote L0 files: let the initial capture and upload go first.
        await self._shipped.wait()
        await self.lifecycle.run(stop)

    async def _capture_loop(self, stop: asyncio.Event) -> None:
        self._changed.set()  # the first pass writes the initial snapshot or catches up
        while not stop.is_set():
            await self._changed.wait()
            self._changed.clear()
            if self.paused:
                continue  # the WAL keeps everything; unpausing captures it in one sync
            gap = self._last_capture + self._min_gap - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
            self._last_capture = time.monotonic()
            try:
                result = await self.capture()
                self._recheck_unpublished(result.unpublished)
                self.last_error = None
                if self._disk_full:
                    self._disk_full = False
                    log.info("%s: space is available again in %s; capture resumed", self.db.path, self.db.meta_dir)
                    self.hook("disk_full", {"db": self.db.path, "value": 0})
            except Exception as exc:  # keep following the database; the error is reported in status
                self.last_error = f"{type(exc).__name__}: {exc}"
                if _disk_full_error(exc):
                    # One error line per episode; the retries every monitor-interval stay quiet.
                    if not self._disk_full:
                        self._disk_full = True
                        log.error(
                            "%s: disk full: No space left in meta directory %s; capture is paused and "
                            "retried until space returns: %s", self.db.path, self.db.meta_dir, exc,
                            extra={"db": self.db.path},
                        )
                        self.hook("disk_full", {"db": self.db.path, "value": 1})
                else:
                    log.error("%s: sync failed: %s", self.db.path, exc, extra={"db": self.db.path})
                self.hook("sync_error", {"db": self.db.path, "error": self.last_error})
                await asyncio.sleep(self.spec.monitor_interval)
                self._changed.set()

    def _recheck_unpublished(self, unpublished: bool) -> None:
        """Look again soon (2, 8, 32, 128 ms) while a writer has frames the wal-index does not show yet."""
        if not unpublished or self._rechecks >= len(UNPUBLISHED_RECHECKS):
            self._rechecks = 0
            return
        asyncio.get_running_loop().call_later(UNPUBLISHED_RECHECKS[self._rechecks], self._changed.set)
        self._rechecks += 1

    async def _upload_loop(self, stop: asyncio.Event) -> None:
        self._new_ltx.set()
        while not stop.is_set():
            await self._new_ltx.wait()
            self._new_ltx.clear()
            try:
                await self.upload(stop)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error(
                    "%s: replica %s: %s", self.db.path, self.replica.url, exc,
                    extra={"db": self.db.path, "replica": self.replica.url},
                )
                await asyncio.sleep(self.spec.monitor_interval)
                self._new_ltx.set()

    async def _watch(self, stop: asyncio.Event) -> None:
        try:
            from asyncinotify import Inotify, Mask
        except ImportError:  # not Linux: the poll alone detects changes
            return
        wal_name = os.fsencode(os.path.basename(self.db.wal_path))
        loop = asyncio.get_running_loop()
        with Inotify() as inotify:
            inotify.add_watch(os.path.dirname(self.db.path), Mask.MODIFY | Mask.CREATE | Mask.MOVED_TO)

            # One reader callback on the raw descriptor: asyncinotify's iterator re-registers the
            # descriptor and builds an Event object per event, a fifth of the agent's CPU while a
            # writer streams frames into the WAL.
            def readable() -> None:
                try:
                    data = os.read(inotify.fd, INOTIFY_READ_SIZE)
                except BlockingIOError:
                    return
                if inotify_names(data, wal_name):
                    self._changed.set()

            loop.add_reader(inotify.fd, readable)
            try:
                await stop.wait()
            finally:
                loop.remove_reader(inotify.fd)

    async def _poll(self, stop: asyncio.Event) -> None:
        last: tuple[int, int] | None = None
        while not stop.is_set():
            await asyncio.sleep(self.spec.monitor_interval)
            try:
                st = os.stat(self.db.wal_path)
                cur = (st.st_size, st.st_mtime_ns)
            except FileNotFoundError:
                cur = (0, 0)
            if cur != last or self.db.checkpoint_mode_due() is not None:
                self._changed.set()
            last = cur

    def status(self) -> dict[str, Any]:
        """What `/status` reports for this database."""
        lag = None
        if self.replica.pos < self.db.pos and self.seen_at:
            lag = time.time() - min(self.seen_at.values())
        elif self.replica.pos >= self.db.pos:
            lag = 0.0
        last_upload = self.replica.stats.last_upload
        return {
            "path": self.db.path,
            "txid": self.db.pos,
            "remote_txid": self.replica.pos,
            "replica": self.replica.url,
            "last_sync": _rfc3339(self.last_sync),
            "last_upload": _rfc3339(last_upload),
            "last_upload_age_seconds": None if last_upload is None else round(time.time() - last_upload, 3),
            "lag_seconds": None if lag is None else round(lag, 3),
            "error": self.lease.lost or self.last_error or self.replica.stats.last_error,
            "paused": self.paused,
        }

    def reconfigure(self, spec: DatabaseSpec, paused: bool) -> list[str]:
        """Apply a reloaded configuration; returns what cannot change without a restart."""
        old = self.spec
        if spec.replica_settings != old.replica_settings:
            return [f"{self.db.path}: replica settings changed"]
        old_levels = old.lifecycle.levels if old.lifecycle else None
        new_levels = spec.lifecycle.levels if spec.lifecycle else None
        if (old_levels is None) != (new_levels is None) or len(old_levels or []) != len(new_levels or []):
            return [f"{self.db.path}: number of compaction levels changed"]
        self.spec = dataclasses.replace(spec, client=old.client)
        self.db.opts = spec.options
        self.replica.sync_interval = spec.sync_interval
        self._min_gap = 0.0 if spec.client.type == "file" else spec.sync_interval
        if self.lifecycle is not None and spec.lifecycle is not None:
            self.lifecycle.settings = spec.lifecycle
        if self.paused and not paused:
            self._changed.set()
        self.paused = paused
        return []


def inotify_names(data: bytes, name: bytes) -> bool:
    """Whether raw inotify events concern `name` (or the kernel queue overflowed and any might)."""
    offset = 0
    while offset + INOTIFY_EVENT.size <= len(data):
        _wd, mask, _cookie, length = INOTIFY_EVENT.unpack_from(data, offset)
        offset += INOTIFY_EVENT.size
        if mask & IN_Q_OVERFLOW or data[offset : offset + length].rstrip(b"\0") == name:
            return True
        offset += length
    return False


def _disk_full_error(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT anywhere in the exception's cause/context chain."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _rfc3339(ts: float | None) -> str | None:
    return None if ts is None else format_timestamp(datetime.fromtimestamp(ts, UTC))


class Store:
    """Every database of one agent process."""

    def __init__(self, specs: list[DatabaseSpec], hook: Hook | None = None) -> None:
        self.runners = [DatabaseRunner(s, hook) for s in specs]
        self.restart_required: list[str] = []

    async def open(self) -> None:
        """Open every database and replica; the first failure stops start-up with its message."""
        for runner in self.runners:
            await runner.open()

    async def run(self, stop: asyncio.Event, shutdown_timeout: float = 30.0) -> None:
        """Replicate until `stop`, then give every database a final sync."""
        try:
            await asyncio.gather(*(r.run(stop) for r in self.runners))
        finally:
            for r in self.runners:
                await r.shutdown(shutdown_timeout)

    async def sync_once(self, *, force_snapshot: bool = False, enforce_retention: bool = False) -> None:
        """One capture and upload of every database (`replicate -once`), optionally a snapshot
        and retention."""
        stop = asyncio.Event()
        # The leases are renewed meanwhile: a long upload must not leave the later writes fenced.
        keepers = [asyncio.create_task(r.lease.keep(stop)) for r in self.runners]
        try:
            for r in self.runners:
                await r.capture()
                await r.upload(deadline=time.monotonic() + 30)
                if r.lifecycle is not None and force_snapshot:
                    await r.lifecycle.snapshot()
                if r.lifecycle is not None and enforce_retention:
                    await r.lifecycle.enforce_snapshot_retention()
                    await r.lifecycle.enforce_l0_retention()
        finally:
            stop.set()
            for k in keepers:
                k.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)

    @property
    def lost_lease(self) -> bool:
        return any(r.lost_lease for r in self.runners)

    def statuses(self) -> list[dict[str, Any]]:
        """`/status` of every database."""
        return [dict(r.status(), restart_required=self.restart_required) for r in self.runners]

    def reconfigure(self, specs: list[DatabaseSpec], paused: bool) -> list[str]:
        """Apply a reloaded configuration to running databases; remember what needs a restart."""
        by_path = {s.path: s for s in specs}
        reasons = [f"{p}: database added" for p in by_path.keys() - {r.db.path for r in self.runners}]
        for r in self.runners:
            spec = by_path.get(r.db.path)
            if spec is None:
                reasons.append(f"{r.db.path}: database removed")
            else:
                reasons += r.reconfigure(spec, paused)
        self.restart_required = reasons
        return reasons

    async def close(self) -> None:
        """Release every lease and database without a final sync."""
        for r in self.runners:
            with contextlib.suppress(StorageError):
                await r.lease.release()
            with contextlib.suppress(StorageError):
                await r.replica.client.close()
            r.db.close()
