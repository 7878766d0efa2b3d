"""Many idle databases in one agent cost no task each, and their timers no work each.

A thousand tenant databases, most of them idle: a task per database per job (capture, upload, poll,
file check, lease, every compaction level) was a wakeup per database per interval, and an idle
database's compaction listed its replica every level interval to find nothing new.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from helpers import file_replicated_specs, until, write_batch
from lifeboat.agent.compaction import LifecycleSettings
from lifeboat.agent.store import Store

DATABASES = 30
FAST = LifecycleSettings(levels=[0.2], l0_retention_check_interval=0.2, l0_retention=0.0)


def _store(tmp_path: Path, n: int, lifecycle: LifecycleSettings | None = None) -> Store:
    return Store(file_replicated_specs(tmp_path, n, monitor_interval=0.05, lifecycle=lifecycle))



def test_idle_databases_hold_no_task(tmp_path: Path) -> None:
    async def scenario() -> int:
        store = _store(tmp_path, DATABASES)
        await store.open()
        stop = asyncio.Event()
        task = asyncio.create_task(store.run(stop, shutdown_timeout=5))
        try:
            await until(lambda: all(r.replica.pos >= r.db.pos > 0 for r in store.runners))
            await asyncio.sleep(0.5)  # many poll intervals: every database idle
            # Polls and lease renewals come and go (a loaded machine can catch a few at once); a task
            # held per database would keep the count at 30 or more however long this waits.
            counts: list[int] = []
            await until(lambda: counts.append(len(asyncio.all_tasks()) - 2) or counts[-1] <= 2, timeout=30)
            return counts[-1]  # less this scenario and the store's own task
        finally:
            stop.set()
            await task

    assert asyncio.run(scenario()) <= 2  # a poll's work in flight at most, whatever the count


def test_an_idle_database_is_not_listed_by_its_timers(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int]:
        store = _store(tmp_path, 1, FAST)
        runner = store.runners[0]
        listings = [0]
        real = runner.spec.client.ltx_files

        async def counted(*a: Any, **kw: Any) -> Any:
            listings[0] += 1
            return await real(*a, **kw)

        runner.spec.client.ltx_files = counted  # type: ignore[method-assign]
        await store.open()
        stop = asyncio.Event()
        task = asyncio.create_task(store.run(stop, shutdown_timeout=5))
        try:
            await until(lambda: runner.replica.pos >= runner.db.pos > 0)
            await asyncio.sleep(1.0)  # the first compaction and retention runs
            before = listings[0]
            await asyncio.sleep(1.5)  # several level and retention intervals, nothing written
            idle = listings[0] - before
            await asyncio.to_thread(write_batch, Path(runner.db.path), 99, 2)
            await asyncio.sleep(1.5)  # a new L0 file: compaction has input again
            return idle, listings[0] - before - idle
        finally:
            stop.set()
            await task

    idle, busy = asyncio.run(scenario())
    assert idle == 0
    assert busy > 0
