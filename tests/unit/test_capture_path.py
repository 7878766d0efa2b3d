"""The capture path's cost per commit, as behaviour: a capture ships to a directory replica from its
own worker-thread call (counted as a PUT and fenced by the lease, like any upload), and a wake-up
that finds nothing new in the WAL hands nothing to a thread.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from helpers import create_db, l0_txids, write_batch
from lifeboat.agent.db import SyncResult
from lifeboat.agent.metrics import Metrics
from lifeboat.agent.storage import new_client
from lifeboat.agent.store import DatabaseRunner, DatabaseSpec

PUT = {"replica_type": "file", "operation": "PUT"}


async def _open_runner(db: Path, replica: Path, metrics: Metrics) -> DatabaseRunner:
    client = metrics.instrument(new_client({"url": f"file://{replica}"}), str(db))
    runner = DatabaseRunner(DatabaseSpec(str(db), client, monitor_interval=3600.0), hook=metrics.observe)
    await runner.open()
    await runner.capture()  # the initial snapshot
    await runner.upload()
    return runner


def test_capture_ships_to_a_directory_replica_in_its_own_thread_call(tmp_path: Path) -> None:
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    create_db(db)

    async def scenario() -> None:
        metrics = Metrics()
        runner = await _open_runner(db, replica, metrics)
        try:
            shipped = runner.replica.pos
            puts = metrics.registry.get_sample_value("litestream_replica_operation_total", PUT)
            write_batch(db, 1)
            await runner.capture()  # no upload job runs: the runner was never started
            assert runner.db.pos == runner.replica.pos == shipped + 1
            assert l0_txids(replica)[-1] == shipped + 1
            assert metrics.registry.get_sample_value("litestream_replica_operation_total", PUT) == puts + 1
            assert metrics.registry.get_sample_value("lifeboat_replica_txid", {"db": str(db)}) == shipped + 1

            # Without the lease provably ours, the capture's own shipping writes nothing either.
            deadline, runner.lease.deadline = runner.lease.deadline, 0.0
            write_batch(db, 2)
            await runner.capture()
            assert runner.db.pos == shipped + 2
            assert runner.replica.pos == shipped + 1
            assert l0_txids(replica)[-1] == shipped + 1
            runner.lease.deadline = deadline
            await runner.upload()
            assert l0_txids(replica)[-1] == runner.replica.pos == shipped + 2
        finally:
            await runner.shutdown(5)

    asyncio.run(scenario())


def test_a_wake_up_with_nothing_new_hands_nothing_to_a_thread(tmp_path: Path) -> None:
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    create_db(db)

    async def scenario() -> list[int]:
        runner = await _open_runner(db, replica, Metrics())
        real_sync, calls = runner.db.sync, []

        def sync() -> SyncResult:
            calls.append(runner.db.pos)
            return real_sync()

        runner.db.sync = sync  # type: ignore[method-assign]
        try:
            write_batch(db, 1)
            await runner._capture_job()  # the commit's first WAL event: a sync
            await runner._capture_job()  # its later events: nothing left to look for
            await runner._capture_job()
            assert l0_txids(replica)[-1] == runner.db.pos
            return list(calls)  # before the final sync of the shutdown
        finally:
            await runner.shutdown(5)

    assert len(asyncio.run(scenario())) == 1
