"""Prometheus metrics under Litestream's names and labels, so existing dashboards keep working.

Litestream's counters without a `_total` suffix are Gauges here: prometheus_client would append
`_total` to a Counter's name, and the exact names matter more than the TYPE line.

Three sources feed them: the store's events (`Metrics.observe`, also logged at debug level by
`log_event`), a thin wrapper around every `ReplicaClient` (`Metrics.instrument`: operation counts,
bytes, durations and errors by GET/PUT/DELETE/LIST, and the L0 retention gauge from the listings
the agent makes anyway), and file sizes read at each sync.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .storage import each_level_ltx_files, sealed_writer

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
OP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
OPERATIONS = ("GET", "PUT", "DELETE", "LIST")
CHECKPOINT_MODES = ("PASSIVE", "TRUNCATE")
L0_STATUSES = ("eligible", "not_compacted", "too_recent")
SNAPSHOT_LEVEL = 9

log = logging.getLogger("lifeboat.events")


@dataclass(frozen=True, slots=True)
class _DbSeries:
    """One database's series of the sync and upload events."""

    sync_count: Any
    total_wal_bytes: Any
    sync_seconds: Any
    disk_full: Any
    txid: Any
    db_size: Any
    wal_size: Any
    lag: Any
    replica_txid: Any


class Metrics:
    """One registry per agent process; `observe` is the store's event hook."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._newest_snapshot: dict[str, float] = {}
        self.db_size = Gauge("litestream_db_size", "The current size of the real DB", ["db"], registry=r)
        self.wal_size = Gauge("litestream_wal_size", "The current size of the real WAL", ["db"], registry=r)
        self.total_wal_bytes = Gauge(
            "litestream_total_wal_bytes", "Total number of bytes written to shadow WAL", ["db"], registry=r
        )
        self.txid = Gauge("litestream_txid", "Current transaction ID", ["db"], registry=r)
        self.sync_count = Gauge("litestream_sync_count", "Number of sync operations", ["db"], registry=r)
        self.sync_errors = Gauge("litestream_sync_error_count", "Number of sync errors", ["db"], registry=r)
        self.sync_seconds = Gauge("litestream_sync_seconds", "Time spent syncing shadow WAL", ["db"], registry=r)
        self.disk_full = Gauge("litestream_disk_full", "1 while the meta directory's disk is full", ["db"], registry=r)
        self.checkpoint_count = Gauge(
            "litestream_checkpoint_count", "Number of checkpoint operations", ["db", "mode"], registry=r
        )
        self.checkpoint_errors = Gauge(
            "litestream_checkpoint_error_count", "Number of checkpoint errors", ["db", "mode"], registry=r
        )
        self.checkpoint_seconds = Gauge(
            "litestream_checkpoint_seconds", "Time spent checkpointing", ["db", "mode"], registry=r
        )
        self.compaction_verify_errors = Gauge(
            "litestream_compaction_verify_error_count", "Number of post-compaction verification failures", ["db"],
            registry=r,
        )
        self.validation_errors = Gauge(
            "lifeboat_validation_errors",
            "TXID gaps, overlaps and unsorted files in the replica's levels at the last validation check",
            ["db"],
            registry=r,
        )
        self.replica_ops = Counter(
            "litestream_replica_operation",
            "The number of replica operations performed",
            ["replica_type", "operation"],
            registry=r,
        )
        self.replica_bytes = Gauge(
            "litestream_replica_operation_bytes",
            "The number of bytes used by replica operations",
            ["replica_type", "operation"],
            registry=r,
        )
        self.replica_seconds = Histogram(
            "litestream_replica_operation_duration_seconds",
            "Duration of replica operations",
            ["replica_type", "operation"],
            buckets=OP_BUCKETS,
            registry=r,
        )
        self.replica_errors = Counter(
            "litestream_replica_operation_errors",
            "The number of replica operations that failed",
            ["replica_type", "operation", "code"],
            registry=r,
        )
        self.l0_retention = Gauge(
            "litestream_l0_retention_files_total",
            "L0 files by retention status at the last check",
            ["db", "status"],
            registry=r,
        )
        self.lag = Histogram(
            "lifeboat_replication_lag_seconds",
            "Time from a change being seen in the WAL to it being durable in the replica",
            ["db"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.checkpoint_blocked = Gauge(
            "lifeboat_checkpoint_blocked_seconds",
            "How long readers have kept checkpoints from copying the whole WAL (0: they do not)",
            ["db"],
            registry=r,
        )
        self.replica_txid = Gauge("lifeboat_replica_txid", "Highest TXID durable in the replica", ["db"], registry=r)
        self.last_snapshot = Gauge(
            "lifeboat_last_snapshot_timestamp_seconds",
            "Creation time of the newest snapshot (L9) the agent saw in the replica",
            ["db"],
            registry=r,
        )
        # Series every sync, upload and replica operation updates, looked up once: a `labels` call
        # takes a lock and builds its key, a dozen times per commit otherwise.
        self._per_db: dict[str, _DbSeries] = {}
        self._per_op: dict[tuple[str, str], tuple[Any, Any, Any]] = {}

    def register(self, db: str, replica_type: str) -> None:
        """Create every series of one database at zero, so dashboards and alerts see them at once."""
        for g in (self.sync_errors, self.sync_count, self.sync_seconds, self.disk_full, self.total_wal_bytes):
            g.labels(db)
        self.compaction_verify_errors.labels(db)
        self.validation_errors.labels(db)
        for mode in CHECKPOINT_MODES:
            for g in (self.checkpoint_count, self.checkpoint_errors, self.checkpoint_seconds):
                g.labels(db, mode)
        for status in L0_STATUSES:
            self.l0_retention.labels(db, status)
        for op in OPERATIONS:
            self.replica_ops.labels(replica_type, op)
            self.replica_bytes.labels(replica_type, op)
            self.replica_seconds.labels(replica_type, op)
        self.lag.labels(db)
        self.replica_txid.labels(db)
        self.checkpoint_blocked.labels(db)
        self.update_sizes(db)

    def update_sizes(self, db: str) -> None:
        """`litestream_db_size` and `litestream_wal_size` from the files (a stat each)."""
        series = self._db_series(db)
        for gauge, path in ((series.db_size, db), (series.wal_size, db + "-wal")):
            try:
                gauge.set(os.stat(path).st_size)
            except OSError:
                gauge.set(0)

    def _db_series(self, db: str) -> _DbSeries:
        series = self._per_db.get(db)
        if series is None:
            series = self._per_db[db] = _DbSeries(
                *(m.labels(db) for m in (self.sync_count, self.total_wal_bytes, self.sync_seconds, self.disk_full,
                                         self.txid, self.db_size, self.wal_size, self.lag, self.replica_txid))
            )
        return series

    def observe(self, event: str, fields: dict[str, Any]) -> None:
        """Turn a store event into metric updates, and log it at debug level."""
        log_event(event, fields)
        db = fields.get("db", "")
        if event == "sync":
            series = self._db_series(db)
            series.sync_count.inc()
            series.total_wal_bytes.inc(fields.get("wal_bytes", 0))
            series.sync_seconds.inc(fields.get("seconds", 0.0))
            series.disk_full.set(0)
            if fields.get("txids"):
                series.txid.set(fields["txids"][-1])
            self.update_sizes(db)
        elif event == "sync_error":
            self.sync_errors.labels(db).inc()
            if "No space left" in str(fields.get("error", "")):
                self.disk_full.labels(db).set(1)
        elif event == "disk_full":
            self.disk_full.labels(db).set(1 if fields.get("value") else 0)
        elif event == "checkpoint":
            self.checkpoint_count.labels(db, fields["mode"]).inc()
            self.checkpoint_seconds.labels(db, fields["mode"]).inc(fields.get("seconds", 0.0))
        elif event == "checkpoint_error":
            self.checkpoint_errors.labels(db, fields["mode"]).inc()
        elif event == "checkpoint_blocked":
            self.checkpoint_blocked.labels(db).set(fields["seconds"])
        elif event == "compaction_verify_error":
            self.compaction_verify_errors.labels(db).inc()
        elif event == "validation":
            self.validation_errors.labels(db).set(fields["problems"])
        elif event == "snapshot":
            self.snapshot_seen(db, time.time())
        elif event == "uploaded":
            series = self._db_series(db)
            series.lag.observe(fields["lag"])
            series.replica_txid.set(fields["txid"])
        elif event == "db_size":
            self.db_size.labels(db).set(fields["db_size"])
            self.wal_size.labels(db).set(fields["wal_size"])

    def snapshot_seen(self, db: str, created: float) -> None:
        """A snapshot created at `created` exists: keep the newest time."""
        if created > self._newest_snapshot.get(db, 0.0):
            self._newest_snapshot[db] = created
            self.last_snapshot.labels(db).set(created)

    def instrument(self, client: Any, db: str = "", l0_retention: float | None = None) -> InstrumentedClient:
        """Wrap a ReplicaClient so its operations show in the replica metrics."""
        if isinstance(client, InstrumentedClient):
            return client
        return InstrumentedClient(client, self, db, l0_retention)

    # -- used by InstrumentedClient --------------------------------------------------------------

    def record(self, rtype: str, op: str, seconds: float, nbytes: int = 0, error: BaseException | None = None) -> None:
        series = self._per_op.get((rtype, op))
        if series is None:
            series = self._per_op[(rtype, op)] = (
                self.replica_ops.labels(rtype, op), self.replica_seconds.labels(rtype, op),
                self.replica_bytes.labels(rtype, op),
            )
        count, duration, size = series
        count.inc()
        duration.observe(seconds)
        if nbytes:
            size.inc(nbytes)
        if error is not None:
            self.replica_errors.labels(rtype, op, type(error).__name__).inc()


_DEBUG_FIELDS = (
    "txids", "wal_bytes", "seconds", "mode", "level", "inputs", "txid", "lag", "deleted", "what", "problems",
)


def log_event(event: str, fields: dict[str, Any]) -> None:
    """One debug line per store event (sync, checkpoint, compaction, ...); errors at error level are
    logged where they happen. Fields are data the store produced: never configuration or secrets."""
    # Failures were logged at ERROR where they happened, with their database and replica.
    level = logging.DEBUG
    if not log.isEnabledFor(level):
        return
    data = {k: fields[k] for k in _DEBUG_FIELDS if k in fields}
    if "txids" in data and len(data["txids"]) > 8:
        data["txids"] = [data["txids"][0], data["txids"][-1]]
    if "error" in fields:
        data["error"] = fields["error"]
    text = " ".join(f"{k}={v}" for k, v in data.items())
    log.log(level, "%s %s: %s", event, fields.get("db", ""), text, extra={"event": event, "db": fields.get("db"),
                                                                         "fields": data})


class InstrumentedClient:
    """A ReplicaClient that counts, sizes and times every operation of the client it wraps.

    Also derives `litestream_l0_retention_files_total` from full L0/L1 listings (the retention check
    lists both anyway), with Litestream's statuses: covered by L1 and older than `l0-retention`
    (eligible), not yet in L1 (not_compacted), covered but younger (too_recent).
    """

    def __init__(self, inner: Any, metrics: Metrics, db: str, l0_retention: float | None) -> None:
        self.inner = inner
        self.metrics = metrics
        self.db = db
        self.l0_retention = l0_retention
        self._l0: list[Any] | None = None
        self._l1_max: int | None = None

    @property
    def type(self) -> str:
        return str(self.inner.type)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return repr(self.inner)

    async def _timed(self, op: str, coro: Any, nbytes: int = 0) -> Any:
        t0 = time.monotonic()
        try:
            result = await coro
        except BaseException as exc:
            self.metrics.record(self.type, op, time.monotonic() - t0, 0, exc)
            raise
        self.metrics.record(self.type, op, time.monotonic() - t0, nbytes)
        return result

    async def init(self) -> None:
        await self.inner.init()

    async def close(self) -> None:
        await self.inner.close()

    async def ltx_files(self, level: int, seek: int = 0, use_metadata: bool = False) -> list[Any]:
        files = await self._timed("LIST", self.inner.ltx_files(level, seek, use_metadata))
        self._listed(level, seek, files)
        return files

    async def all_ltx_files(self) -> dict[int, list[Any]]:
        """Every level's files (see `storage.ltx_files_by_level`): one LIST when the wrapped client
        lists them at once, one per level otherwise."""
        if getattr(type(self.inner), "all_ltx_files", None) is None:
            return await each_level_ltx_files(self)
        by_level: dict[int, list[Any]] = await self._timed("LIST", self.inner.all_ltx_files())
        for level in (0, 1, SNAPSHOT_LEVEL):
            self._listed(level, 0, by_level.get(level, []))
        return by_level

    def _listed(self, level: int, seek: int, files: list[Any]) -> None:
        """What a listing shows the metrics: the newest snapshot, and L0 retention's counts."""
        if level == SNAPSHOT_LEVEL and files and self.db:
            self.metrics.snapshot_seen(self.db, max(f.created_at.timestamp() for f in files))
        if seek == 0 and level in (0, 1):
            if level == 0:
                self._l0 = files
            else:
                self._l1_max = files[-1].max_txid if files else 0
            self._update_l0_retention()

    def _update_l0_retention(self) -> None:
        if self._l0 is None or self._l1_max is None or self.l0_retention is None or not self.db:
            return
        now = datetime.now(UTC).timestamp()
        counts = dict.fromkeys(L0_STATUSES, 0)
        for f in self._l0:
            if f.max_txid > self._l1_max:
                counts["not_compacted"] += 1
            elif f.created_at.timestamp() > now - self.l0_retention:
                counts["too_recent"] += 1
            else:
                counts["eligible"] += 1
        for status, n in counts.items():
            self.metrics.l0_retention.labels(self.db, status).set(n)

    async def open_ltx_file(
        self, level: int, min_txid: int, max_txid: int, offset: int = 0, size: int | None = None
    ) -> AsyncIterator[bytes]:
        t0 = time.monotonic()
        total = 0
        try:
            async for chunk in self.inner.open_ltx_file(level, min_txid, max_txid, offset, size):
                total += len(chunk)
                yield chunk
        except GeneratorExit:
            self.metrics.record(self.type, "GET", time.monotonic() - t0, total)
            raise
        except BaseException as exc:
            self.metrics.record(self.type, "GET", time.monotonic() - t0, total, exc)
            raise
        self.metrics.record(self.type, "GET", time.monotonic() - t0, total)

    async def write_ltx_file(self, level: int, min_txid: int, max_txid: int, src: BinaryIO) -> Any:
        t0 = time.monotonic()
        try:
            info = await self.inner.write_ltx_file(level, min_txid, max_txid, src)
        except BaseException as exc:
            self._put_failed(t0, exc)
            raise
        self.metrics.record(self.type, "PUT", time.monotonic() - t0, info.size)
        return info

    def sealed_writer(self) -> Callable[[int, int, int, Path], Any] | None:
        """The wrapped client's blocking writer (see `storage.sealed_writer`), counted as a PUT.
        It runs in a worker thread: prometheus_client's values are thread-safe."""
        inner = sealed_writer(self.inner)
        if inner is None:
            return None

        def write(level: int, min_txid: int, max_txid: int, path: Path) -> Any:
            t0 = time.monotonic()
            try:
                info = inner(level, min_txid, max_txid, path)
            except BaseException as exc:
                self._put_failed(t0, exc)
                raise
            if info is not None:  # declined: nothing was written
                self.metrics.record(self.type, "PUT", time.monotonic() - t0, info.size)
            return info

        return write

    def _put_failed(self, t0: float, exc: BaseException) -> None:
        self.metrics.record(self.type, "PUT", time.monotonic() - t0, 0, exc)

    async def delete_ltx_files(self, files: list[Any]) -> None:
        await self._timed("DELETE", self.inner.delete_ltx_files(files))

    async def delete_all(self) -> None:
        await self._timed("DELETE", self.inner.delete_all())

    async def read_lock(self) -> Any:
        return await self._timed("GET", self.inner.read_lock())

    async def write_lock(self, body: bytes, if_match: str | None) -> str:
        return str(await self._timed("PUT", self.inner.write_lock(body, if_match), len(body)))

    async def delete_lock(self, if_match: str) -> None:
        await self._timed("DELETE", self.inner.delete_lock(if_match))
