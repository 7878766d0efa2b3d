"""`Store`: the databases of one agent process, each followed and shipped on demand.

Per database, a capture job turns WAL changes into L0 files (woken by inotify on the database's
directory, with a cheap stat poll every `monitor-interval` by the store's scheduler as a fallback)
and an upload job ships them, so a slow or failing store never stops local capture, and local
capture never waits for uploads. One exception, with no network in it: a directory replica on the same
file system takes a caught-up capture's files as hard links made in the capture's own worker-thread
call (one hand-off per commit, not two); anything else, and every retry, is the upload job's. Both
run only when there is work: an idle database holds no task, and its timers (poll, lease renewal,
lifecycle) are looked at by the one scheduler of the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .compaction import Lifecycle, LifecycleSettings
from .db import Database, DatabaseOptions, Peek, SyncResult
from .lease import FencedClient, Lease
from .replica import Replica
from .scheduler import MAX_TICK, Gate, Jobs, OnDemand, Scheduler
from .storage import ReplicaClient, StorageError, format_timestamp
from .watch import SharedWatcher

log = logging.getLogger("lifeboat.store")

Hook = Callable[[str, dict[str, Any]], None]
# A writer publishes its commit in the wal-index microseconds after its last WAL write (the inotify
# event); these delays cover a preempted writer too. A writer mid-transaction (frames spilled, no
# commit yet) is then looked at every UNPUBLISHED_CAP seconds until it commits.
UNPUBLISHED_RECHECKS = (0.002, 0.008, 0.032, 0.128)
UNPUBLISHED_CAP = 1.0
FILE_CAPTURE_GAP = 0.02  # see _capture_gap
# Databases opened (and snapshotted) at once when added while running. An open is a chain of short
# blocking steps (lease, connections, listings, first L0 file, fsyncs) handed to the worker threads
# one at a time: with a few at once the threads and the event loop wait on each other's hand-offs.
# The bound protects descriptors (a few more per database while it opens, beyond the eight it keeps)
# and memory; at 1,000 databases, 8 at once took 13-15 s, 64 at once 10-11 s (six worker threads).
OPEN_CONCURRENCY = 64
LIFECYCLE_CONCURRENCY = 4  # compactions, snapshots and retention runs at once across the store


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
    dynamic: bool = False  # added while running (register, directory mode): not the config's to change


class DatabaseRunner:
    """Follows one database and ships it to its replica."""

    def __init__(self, spec: DatabaseSpec, hook: Hook | None = None, watcher: SharedWatcher | None = None) -> None:
        self.spec = spec
        self.watcher = watcher
        self.db = Database(spec.path, spec.options)
        self.lease = Lease(spec.client)
        # Every writer of the replica (uploads, compaction, snapshots, retention) goes through the fence.
        client = FencedClient(spec.client, self.lease)
        self.replica = Replica(self.db, client, sync_interval=spec.sync_interval)
        self.hook = hook or (lambda event, fields: None)
        self.lifecycle = (
            Lifecycle(self.db, client, spec.lifecycle, self.hook, on_new_l0=lambda: self._new_ltx.set(),
                      input_mark=lambda: self.replica.pos)
            if spec.lifecycle is not None
            else None
        )
        self.last_sync: float | None = None
        # Positions mean something only once the database is open and the replica's position is
        # known: before that, `/status` reports none rather than 0 (a client pairing commits with
        # TXIDs would otherwise acknowledge rows against a position the replica passed long ago).
        self.opened = False
        self.paused = False
        self.disabled = False  # stopped by the store (control socket `stop`, unregister, shutdown)
        self.last_error: str | None = None
        self.seen_at: dict[int, float] = {}
        self._changed = OnDemand(self._capture_job)
        self._new_ltx = OnDemand(self._upload_job)
        self._follow = OnDemand(self._follow_replaced_file)
        self._renewal = OnDemand(self._renew_lease)
        self._jobs = Jobs()  # lifecycle work started by the timers
        self._stop = asyncio.Event()
        self._on_lost: Callable[[], None] = lambda: None
        self._scheduler: Scheduler | None = None
        self._gate: Gate | None = None
        self._shipped = False
        self._lifecycle_started = False
        self._next_poll = 0.0
        self._wal_seen: tuple[int, int] | None = None
        self._lease_due = 0.0
        self._lock = asyncio.Lock()
        self._min_gap = _capture_gap(spec)
        self._last_capture = 0.0
        self._rechecks = 0
        self._disk_full = False
        self._file_missing = False
        self._file_id = (0, 0)  # (device, inode) of the database file being followed

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
        self._file_id = self.db.file_identity()
        self.opened = True

    async def capture(self) -> SyncResult:
        """One sync of the WAL into L0 files (shipped at once when the replica can take them from
        the sync's own thread), then a checkpoint if the policy says so."""
        async with self._lock:
            try:
                return await self._capture()
            finally:
                # Whatever failed after it, every L0 file written and not yet shipped ships.
                if self.db.pos > self.replica.pos:
                    self._new_ltx.set()

    async def _capture(self) -> SyncResult:
        seen = time.time()
        shipped_from = self.replica.pos
        result = await self.replica.sync_and_ship(self.db.sync)
        mode = self.db.checkpoint_mode_due()
        if mode is not None:
            result.txids += await self._checkpoint(mode)
        for txid in result.txids:
            self.seen_at[txid] = seen
        if result.txids:
            self.last_sync = time.time()
            self.hook(
                "sync",
                {
                    "db": self.db.path,
                    "txids": result.txids,
                    "wal_bytes": result.wal_bytes,
                    "snapshot": result.snapshot,
                    "seconds": result.seconds,
                },
            )
        if self.replica.pos > shipped_from:
            self._uploaded(shipped_from)
        return result

    async def _checkpoint(self, mode: str) -> list[int]:
        """A due checkpoint; returns the TXIDs of the L0 files it wrote. A checkpoint that fails (the
        application holds the write lock past busy-timeout) is reported as such and retried on the
        schedule; it is not a sync failure."""
        before = self.db.pos
        t0 = time.monotonic()
        try:
            more = await asyncio.to_thread(self.db.checkpoint, mode)
        except sqlite3.Error as exc:
            log.warning("%s: checkpoint (%s) failed: %s", self.db.path, mode, exc, extra={"db": self.db.path})
            self.hook("checkpoint_error", {"db": self.db.path, "mode": mode, "error": str(exc)})
            return list(range(before + 1, self.db.pos + 1))
        finally:
            self.hook("checkpoint_blocked", {"db": self.db.path, "seconds": self.db.checkpoint_blocked_seconds()})
        self.hook("checkpoint", {"db": self.db.path, "mode": mode, "seconds": time.monotonic() - t0})
        return more.txids

    async def upload(
        self, stop: asyncio.Event | None = None, deadline: float | None = None, interval: float | None = None
    ) -> None:
        """Ship every local L0 file the replica lacks (retrying failures, every `interval` if given)."""
        before = self.replica.pos
        await self.replica.sync_with_retry(stop, deadline, interval)
        self._uploaded(before)

    def _uploaded(self, before: int) -> None:
        """Report what reached the replica since it was at `before` (lag, position)."""
        if self.replica.pos and not self._shipped:
            self._shipped = True
            self._lifecycle_due()  # its first jobs at once, not a tick later
        now = time.time()
        for txid in range(before + 1, self.replica.pos + 1):
            seen = self.seen_at.pop(txid, None)
            if seen is not None:
                self.hook(
                    "uploaded",
                    {"db": self.db.path, "txid": txid, "lag": now - seen, "replica_type": self.replica.client.type},
                )

    def start(self, scheduler: Scheduler, on_lost: Callable[[], None], gate: Gate) -> None:
        """Replicate from now on: woken by WAL events and by the scheduler's ticks. `on_lost` is
        called if the lease is lost (this database's work then stops with the agent's); lifecycle
        work waits for room at `gate`."""
        self._on_lost = on_lost
        self._scheduler = scheduler
        self._gate = gate
        self._lease_due = time.monotonic() + self.lease.renewal_due_in()
        if self.watcher is not None:
            self.watcher.add(self.db.wal_path, self._changed.set)
        for work in (self._changed, self._new_ltx, self._follow, self._renewal):
            work.open()
        self._changed.set()  # the first pass writes the initial snapshot or catches up
        self._new_ltx.set()
        scheduler.add(self)

    async def halt(self) -> None:
        """End what `start` began and wait for it (no final sync: see `shutdown`)."""
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.discard(self)
        if self.watcher is not None:
            self.watcher.remove(self.db.wal_path, self._changed.set)
        for work in (self._changed, self._new_ltx, self._follow, self._renewal):
            await work.close()
        await self._jobs.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Replicate alone (a scheduler and watcher of its own) until `stop` or a lost lease."""
        own_watcher = self.watcher is None
        if own_watcher:
            self.watcher = SharedWatcher()
        scheduler = Scheduler()
        self.start(scheduler, stop.set, Gate(LIFECYCLE_CONCURRENCY))
        try:
            await scheduler.run(stop)
        finally:
            await self.halt()
            if own_watcher and self.watcher is not None:
                self.watcher.close()
                self.watcher = None

    @property
    def tick_interval(self) -> float:
        """How often the scheduler looks at this database: the poll interval, and often enough for
        a short lease TTL to be renewed in time."""
        return min(self.spec.monitor_interval, self.lease.ttl / 10)

    def tick(self, now: float) -> None:
        """Start whatever is due (called by the scheduler on every tick; never blocks)."""
        if now >= self._next_poll:
            # A little early rather than a whole tick late when the ticks jitter.
            self._next_poll = now + self.spec.monitor_interval * 0.9
            self._poll()
        if now + min(MAX_TICK, self.tick_interval) >= self._lease_due and not self._renewal.busy:
            self._lease_due = float("inf")  # set again when the renewal ends
            self._renewal.set()
        self._lifecycle_due()

    def _lifecycle_due(self) -> None:
        """Start the lifecycle jobs that are due (compaction reads remote L0 files: none before the
        initial capture and upload have shipped)."""
        gate = self._gate
        if self.lifecycle is None or not self._shipped or gate is None or self._stop.is_set():
            return
        if not self._lifecycle_started:
            self._lifecycle_started = True
            self.lifecycle.start(held=self.replica.held_at_open)
        for job in self.lifecycle.due():
            self._jobs.spawn(lambda job=job: gate.run(job))

    def _poll(self) -> None:
        """The fallback under inotify: look at the WAL if its size or mtime moved or a checkpoint
        is due, and follow the database file if it was replaced or removed."""
        try:
            st = os.stat(self.db.wal_path)
            cur = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            cur = (0, 0)
        if cur != self._wal_seen or self.db.checkpoint_mode_due() is not None:
            self._changed.set()
        self._wal_seen = cur
        try:
            st = os.stat(self.db.path)
        except FileNotFoundError:
            self._follow.set()  # reports the missing file once
            return
        if (st.st_dev, st.st_ino) != self._file_id or self._file_missing:
            self._follow.set()

    async def _renew_lease(self) -> None:
        wait = await self.lease.renew_step(self._stop)
        if wait is None:  # lost for good: this database stops replicating, and the agent with it
            self._on_lost()
        else:
            self._lease_due = time.monotonic() + wait

    async def final_sync(self, timeout: float, interval: float | None = None) -> None:
        """Capture what the application committed last and make it durable in the replica, retrying
        every `interval` seconds until `timeout`."""
        await self.capture()
        await self.upload(deadline=time.monotonic() + timeout, interval=interval)

    @property
    def lost_lease(self) -> bool:
        """The lease was taken over, or its renewal broke: this database stopped replicating."""
        return self.lease.lost is not None

    async def shutdown(self, timeout: float, interval: float | None = None) -> None:
        """Final sync (only with the lease proven ours afresh), release the lease, close."""
        try:
            if not self.lost_lease and self.opened:
                # Another agent may have taken over since the last renewal: our tail is not its history.
                await self.lease.renew()
                await self.final_sync(timeout, interval)
        except Exception as exc:  # report every database's failure, not just the first
            log.error("%s: final sync failed: %s", self.db.path, exc)
        try:
            await self.lease.release()
        except StorageError as exc:
            log.warning("replica %s: lease release failed: %s", self.replica.url, exc)
        await self.replica.client.close()
        self.db.close()

    async def _capture_job(self) -> None:
        """One capture, as a change asked for it (a failed one is retried every monitor-interval)."""
        if self.paused:
            return  # the WAL keeps everything; unpausing captures it in one sync
        peeked = self._peek()
        if peeked is Peek.IDLE:
            # A commit's later WAL writes wake us again after its capture: nothing is left to look for.
            self._recheck_unpublished(False)
            return
        gap = self._last_capture + self._min_gap - time.monotonic()
        if gap > 0:
            await asyncio.sleep(gap)
            peeked = self._peek()
        self._last_capture = time.monotonic()
        try:
            # What the wal-index alone tells needs no sync (and no thread) to find out.
            result = await self.capture() if peeked is None else SyncResult(unpublished=peeked is Peek.UNPUBLISHED)
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

    def _peek(self) -> Peek | None:
        """What a capture would find, when the wal-index alone tells (see `Database.peek`) and the
        capture would do nothing else: None while a capture or a reopen holds the database, or a
        checkpoint is due. Never awaits, so nothing can take the lock between the check and the
        reads."""
        if self._lock.locked() or self.db.checkpoint_mode_due() is not None:
            return None
        return self.db.peek()

    def _recheck_unpublished(self, unpublished: bool) -> None:
        """Look again soon while a writer has frames the wal-index does not show yet: after 2, 8, 32
        and 128 ms, then every `UNPUBLISHED_CAP` (or monitor-interval, if shorter) until they are
        published. Never give up: the commit's own WAL event may already have been spent on a look
        that came too early, and publishing it touches only the -shm, which nothing watches."""
        if not unpublished:
            self._rechecks = 0
            return
        cap = min(self.spec.monitor_interval, UNPUBLISHED_CAP)
        delay = min(UNPUBLISHED_RECHECKS[self._rechecks], cap) if self._rechecks < len(UNPUBLISHED_RECHECKS) else cap
        asyncio.get_running_loop().call_later(delay, self._changed.set)
        self._rechecks += 1

    async def _upload_job(self) -> None:
        """Ship what was captured (a failed upload is retried every monitor-interval)."""
        try:
            await self.upload(self._stop)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error(
                "%s: replica %s: %s", self.db.path, self.replica.url, exc,
                extra={"db": self.db.path, "replica": self.replica.url},
            )
            await asyncio.sleep(self.spec.monitor_interval)
            self._new_ltx.set()

    async def _follow_replaced_file(self) -> None:
        """An application that restores a copy by rename puts a new inode at the path: follow it.

        Keeping the old, unlinked file would ship nothing, silently. The reopened database writes
        a snapshot of the new file unless it provably continues the history.
        """
        try:
            st = os.stat(self.db.path)
        except FileNotFoundError:
            if not self._file_missing:
                self._file_missing = True
                log.error("%s: database file was removed; waiting for a database at that path", self.db.path)
            return
        self._file_missing = False
        if (st.st_dev, st.st_ino) == self._file_id:
            return
        async with self._lock:
            old = self._file_id
            log.warning(
                "%s: database file replaced (device %d inode %d -> device %d inode %d); following the new file",
                self.db.path, old[0], old[1], st.st_dev, st.st_ino,
            )
            try:
                await asyncio.to_thread(self.db.reopen)
            except Exception as exc:  # not a usable database (yet): look again next interval
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("%s: cannot follow the replaced database file: %s", self.db.path, exc)
                return
            self._file_id = self.db.file_identity()
        self._changed.set()

    def status(self) -> dict[str, Any]:
        """What `/status` reports for this database (no positions until it is open)."""
        last_upload = self.replica.stats.last_upload
        out: dict[str, Any] = {
            "path": self.db.path,
            "state": "starting",
            "txid": None,
            "remote_txid": None,
            "replica": self.replica.url,
            "last_sync": _rfc3339(self.last_sync),
            "last_upload": _rfc3339(last_upload),
            "last_upload_age_seconds": None if last_upload is None else round(time.time() - last_upload, 3),
            "lag_seconds": None,
            "error": self.lease.lost or self.last_error or self.replica.stats.last_error,
            "paused": self.paused,
        }
        if not self.opened:
            return out
        lag = None
        if self.replica.pos < self.db.pos and self.seen_at:
            lag = time.time() - min(self.seen_at.values())
        elif self.replica.pos >= self.db.pos:
            lag = 0.0
        out.update(
            state="stopped" if self.lost_lease or self.disabled else "paused" if self.paused else "replicating",
            txid=self.db.pos,
            remote_txid=self.replica.pos,
            lag_seconds=None if lag is None else round(lag, 3),
        )
        return out

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
        self._min_gap = _capture_gap(spec)
        if self.lifecycle is not None and spec.lifecycle is not None:
            self.lifecycle.settings = spec.lifecycle
        if self.paused and not paused:
            self._changed.set()
        self.paused = paused
        return []


def _capture_gap(spec: DatabaseSpec) -> float:
    """The least time between two captures; the first change after a quiet period is captured at once.

    Object stores bill per request: at most one L0 per sync-interval. A directory replica ships
    every change almost at once: a commit's WAL writes, and commits a few milliseconds apart, wake
    the capture many times, and each capture costs a whole L0 file, two thread hand-offs and fsyncs,
    so under sustained writes the changes of `FILE_CAPTURE_GAP` are captured together.
    """
    return FILE_CAPTURE_GAP if spec.client.type == "file" else spec.sync_interval


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


async def _discard(runner: DatabaseRunner) -> None:
    """Release what a runner that failed to open may hold (its lease, connections, database)."""
    with contextlib.suppress(Exception):
        await runner.lease.release()
    with contextlib.suppress(Exception):
        await runner.replica.client.close()
    runner.db.close()


def _rfc3339(ts: float | None) -> str | None:
    return None if ts is None else format_timestamp(datetime.fromtimestamp(ts, UTC))


class DatabaseNotFound(LookupError):
    """No database of the store at that path."""


class DatabaseNotOpen(RuntimeError):
    """The database is registered but stopped."""


@dataclass
class SyncOutcome:
    """What a requested sync did: whether it captured anything, and both positions after it."""

    changed: bool
    txid: int
    replicated_txid: int


class Store:
    """Every database of one agent process. Databases can be added, removed, stopped and started
    while it runs (the control socket, directory mode); each running one has its own stop event."""

    def __init__(
        self, specs: list[DatabaseSpec], hook: Hook | None = None, *, open_concurrency: int = OPEN_CONCURRENCY,
        on_add: Callable[[DatabaseRunner], None] | None = None,
    ) -> None:
        self.hook = hook
        self.watcher = SharedWatcher()
        self._runners = {s.path: DatabaseRunner(s, hook, self.watcher) for s in specs}
        self.restart_required: list[str] = []
        self.started_at = time.time()
        self.shutdown_timeout = 30.0
        self.shutdown_interval = 0.5
        self.on_add = on_add or (lambda runner: None)
        # Opening a database writes its initial snapshot: with hundreds discovered at once, a bounded number at a time.
        self._open_concurrency = open_concurrency
        self._opening: asyncio.Semaphore | None = None
        self._stop: asyncio.Event | None = None
        self._closed = False  # `run` has ended: nothing starts any more
        self._adding: set[str] = set()
        self._running: set[str] = set()
        self.scheduler = Scheduler()
        self.gate = Gate(LIFECYCLE_CONCURRENCY)

    @property
    def runners(self) -> list[DatabaseRunner]:
        """The databases, running or stopped, in the order they were added."""
        return list(self._runners.values())

    def find(self, path: str) -> DatabaseRunner | None:
        """The database at `path` (absolute), if the store has it."""
        return self._runners.get(path)

    def is_running(self, path: str) -> bool:
        """Whether the database at `path` is open and being replicated."""
        return path in self._running

    async def open(self) -> None:
        """Open every database and replica; the first failure stops start-up with its message."""
        for runner in self.runners:
            await runner.open()

    async def run(self, stop: asyncio.Event, shutdown_timeout: float = 30.0, shutdown_interval: float = 0.5) -> None:
        """Replicate until `stop`, then give every database a final sync (`shutdown-sync-timeout`,
        retried every `shutdown-sync-interval`)."""
        self._stop = stop
        self.shutdown_timeout = shutdown_timeout
        self.shutdown_interval = shutdown_interval
        for r in self.runners:
            if r.opened:
                self._launch(r)
        try:
            await self.scheduler.run(stop)
        finally:
            self._stop = None
            self._closed = True
            await asyncio.gather(*(self._halt(p) for p in list(self._running)))
            self.watcher.close()

    async def add(self, spec: DatabaseSpec) -> DatabaseRunner:
        """Open a new database (its initial snapshot included) and replicate it; `ValueError` if the
        store already has one at that path. A failure to open leaves the store unchanged."""
        if spec.path in self._runners or spec.path in self._adding:
            raise ValueError(f"{spec.path}: database already registered")
        runner = DatabaseRunner(spec, self.hook, self.watcher)
        self._adding.add(spec.path)  # claimed at once; listed only once open
        try:
            await self._open_runner(runner)
            if self._closed:
                raise RuntimeError(f"{spec.path}: the agent is shutting down")
        except BaseException:
            await _discard(runner)
            raise
        finally:
            self._adding.discard(spec.path)
        self._runners[spec.path] = runner
        self.on_add(runner)
        if self._stop is not None:
            self._launch(runner)
        return runner

    async def remove(self, path: str, timeout: float | None = None) -> DatabaseRunner | None:
        """Stop following the database at `path` (a final sync first) and forget it; the runner
        removed, or None when there was none."""
        runner = self._runners.get(path)
        if runner is None:
            return None
        await self._halt(path, timeout)
        self._runners.pop(path, None)
        return runner

    async def stop_db(self, path: str, timeout: float | None = None) -> bool:
        """Stop replicating a database but keep it registered; False if it was not running."""
        if self._lookup(path) is None or path not in self._running:
            return False
        await self._halt(path, timeout)
        return True

    async def start_db(self, path: str) -> bool:
        """Start a stopped database again (a fresh open and catch-up); False if it was running."""
        old = self._lookup(path)
        if path in self._running:
            return False
        runner = DatabaseRunner(old.spec, self.hook, self.watcher)
        await self._open_runner(runner)
        self._runners[path] = runner
        if self._stop is not None:
            self._launch(runner)
        return True

    async def sync_db(self, path: str, *, wait: bool, timeout: float) -> SyncOutcome:
        """Capture the database now; with `wait`, return only once the replica holds what was captured."""
        runner = self._lookup(path)
        if path not in self._running:
            raise DatabaseNotOpen(f"database not open: {path}")
        before = runner.db.pos
        await runner.capture()
        if wait and runner.replica.pos < runner.db.pos:
            target = runner.db.pos
            await asyncio.wait_for(runner.upload(deadline=time.monotonic() + timeout), timeout)
            if runner.replica.pos < target:
                raise TimeoutError(f"{path}: replica at txid {runner.replica.pos}, not yet {target}")
        return SyncOutcome(runner.db.pos > before, runner.db.pos, runner.replica.pos)

    def _lookup(self, path: str) -> DatabaseRunner:
        runner = self._runners.get(path)
        if runner is None:
            raise DatabaseNotFound(f"database not found: {path}")
        return runner

    async def _open_runner(self, runner: DatabaseRunner) -> None:
        if self._opening is None:
            self._opening = asyncio.Semaphore(self._open_concurrency)
        with self.gate.priority():  # first snapshots before the lifecycle work of databases already open
            async with self._opening:
                await runner.open()
                await runner.capture()

    def _launch(self, runner: DatabaseRunner) -> None:
        if runner.db.path in self._running:
            return  # added while `run` was starting: launched once
        self._running.add(runner.db.path)
        runner.start(self.scheduler, self._lease_lost, self.gate)

    def _lease_lost(self) -> None:
        # A takeover ends replication of that database; the agent stops as a whole and reports it.
        if self._stop is not None:
            self._stop.set()

    async def _halt(self, path: str, timeout: float | None = None) -> None:
        if path not in self._running:
            return
        self._running.discard(path)
        runner = self._runners[path]
        await runner.halt()
        await runner.shutdown(self.shutdown_timeout if timeout is None else timeout, self.shutdown_interval)
        runner.disabled = True

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
        configured = [r for r in self.runners if not r.spec.dynamic]
        reasons = [f"{p}: database added" for p in by_path.keys() - {r.db.path for r in configured}]
        for r in configured:
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
