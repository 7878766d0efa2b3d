"""Prometheus metrics under Litestream's names and labels, so existing dashboards keep working.

Litestream's counters without a `_total` suffix are Gauges here: prometheus_client would append
`_total` to a Counter's name, and the exact names matter more than the TYPE line.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
OP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """One registry per agent process; `observe` is the store's event hook."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.db_size = Gauge("litestream_db_size", "The current size of the real DB", ["db"], registry=r)
        self.wal_size = Gauge("litestream_wal_size", "The current size of the real WAL", ["db"], registry=r)
        self.total_wal_bytes = Gauge("litestream_total_wal_bytes", "Total number of bytes written to shadow WAL",
                                       ["db"], registry=r)
        self.txid = Gauge("litestream_txid", "Current transaction ID", ["db"], registry=r)
        self.sync_count = Gauge("litestream_sync_count", "Number of sync operations", ["db"], registry=r)
        self.sync_errors = Gauge("litestream_sync_error_count", "Number of sync errors", ["db"], registry=r)
        self.sync_seconds = Gauge("litestream_sync_seconds", "Time spent syncing shadow WAL", ["db"],
                                    registry=r)
        self.disk_full = Gauge("litestream_disk_full", "1 while the meta directory's disk is full", ["db"],
                               registry=r)
        self.checkpoint_count = Gauge("litestream_checkpoint_count", "Number of checkpoint operations",
                                        ["db", "mode"], registry=r)
        self.checkpoint_errors = Gauge("litestream_checkpoint_error_count", "Number of checkpoint errors",
                                         ["db", "mode"], registry=r)
        self.checkpoint_seconds = Gauge("litestream_checkpoint_seconds", "Time spent checkpointing",
                                          ["db", "mode"], registry=r)
        self.replica_ops = Counter("litestream_replica_operation", "The number of replica operations performed",
                                   ["replica_type", "operation"], registry=r)
        self.replica_bytes = Gauge("litestream_replica_operation_bytes",
                                     "The number of bytes used by replica operations",
                                     ["replica_type", "operation"], registry=r)
        self.lag = Histogram("lifeboat_replication_lag_seconds",
                             "Time from a change being seen in the WAL to it being durable in the replica",
                             ["db"], buckets=LAG_BUCKETS, registry=r)
        self.replica_txid = Gauge("lifeboat_replica_txid", "Highest TXID durable in the replica", ["db"],
                                  registry=r)

    def observe(self, event: str, fields: dict[str, Any]) -> None:
        """Turn a store event into metric updates."""
        db = fields.get("db", "")
        if event == "sync":
            self.sync_count.labels(db).inc()
            self.total_wal_bytes.labels(db).inc(fields.get("wal_bytes", 0))
            self.sync_seconds.labels(db).inc(fields.get("seconds", 0.0))
            if fields.get("txids"):
                self.txid.labels(db).set(fields["txids"][-1])
        elif event == "sync_error":
            self.sync_errors.labels(db).inc()
        elif event == "checkpoint":
            self.checkpoint_count.labels(db, fields["mode"]).inc()
            self.checkpoint_seconds.labels(db, fields["mode"]).inc(fields.get("seconds", 0.0))
        elif event == "uploaded":
            self.lag.labels(db).observe(fields["lag"])
            self.replica_txid.labels(db).set(fields["txid"])
            rtype = fields.get("replica_type", "")
            self.replica_ops.labels(rtype, "PUT").inc()
            self.replica_bytes.labels(rtype, "PUT").inc(fields.get("size", 0))
        elif event == "db_size":
            self.db_size.labels(db).set(fields["db_size"])
            self.wal_size.labels(db).set(fields["wal_size"])
