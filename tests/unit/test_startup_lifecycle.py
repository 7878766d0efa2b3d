"""A database's lifecycle at start-up does only what the replica's opening listing leaves to do.

With a thousand databases every start-up job is a thousand jobs, all of them in the first minutes
after the last database opened: each compaction level, the snapshot check and the snapshot itself.
The listing of every level made to find the replica's position shows which of them have nothing
to do, and a first snapshot is already the L0 file of TXID 1.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from unittest.mock import patch

from helpers import assert_same_db, create_db, file_url, litestream, ok, until, write_batch
from lifeboat.agent.compaction import LifecycleSettings
from lifeboat.agent.storage import SNAPSHOT_LEVEL, new_client
from lifeboat.agent.storage.file import FileReplicaClient
from lifeboat.agent.store import DatabaseSpec, Store

# Litestream's defaults: no level boundary and no retention check falls within a test.
SETTINGS = LifecycleSettings(levels=[30.0, 300.0, 3600.0], l0_retention_check_interval=300.0)


def _spec(tmp_path: Path) -> DatabaseSpec:
    db = tmp_path / "app.db"
    if not db.exists():
        create_db(db)
        write_batch(db, 1, rows=5)
    client = new_client({"url": file_url(tmp_path / "replica")})
    return DatabaseSpec(str(db), client, monitor_interval=0.05, lifecycle=SETTINGS)


def _level(tmp_path: Path, level: int) -> list[str]:
    d = tmp_path / "replica" / "ltx" / str(level)
    return sorted(p.name for p in d.glob("*.ltx")) if d.is_dir() else []



def test_a_fresh_replica_compacts_only_its_first_level_and_links_its_first_snapshot(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int, int]:
        store = Store([_spec(tmp_path)])
        runner = store.runners[0]
        await store.open()
        stop = asyncio.Event()
        task = asyncio.create_task(store.run(stop, shutdown_timeout=5))
        try:
            # Start-up jobs take the database's lifecycle lock in turn: the snapshot comes last.
            await until(lambda: _level(tmp_path, SNAPSHOT_LEVEL) and _level(tmp_path, 1))
            local = runner.db.l0_path(1).stat().st_ino
            l1 = (tmp_path / "replica" / "ltx" / "1" / _level(tmp_path, 1)[0]).stat().st_ino
            l9 = (tmp_path / "replica" / "ltx" / "9" / _level(tmp_path, SNAPSHOT_LEVEL)[0]).stat().st_ino
            return local, l1, l9
        finally:
            stop.set()
            await task

    local, l1, l9 = asyncio.run(scenario())
    # Levels 2 and 3 held everything level 1 and 2 held when the replica was opened (nothing):
    # their first compaction waits for their own boundary.
    assert _level(tmp_path, 2) == [] and _level(tmp_path, 3) == []
    # L1 and the snapshot of TXID 1 are the first L0 file itself, linked, not re-encoded.
    assert local == l1 == l9
    out = tmp_path / "restored.db"
    ok(litestream("restore", "-o", str(out), file_url(tmp_path / "replica")))
    assert_same_db(out, tmp_path / "app.db")


def test_a_restart_on_an_up_to_date_replica_lists_and_compacts_nothing_again(tmp_path: Path) -> None:
    async def first_run() -> None:
        store = Store([_spec(tmp_path)])
        runner = store.runners[0]
        await store.open()
        stop = asyncio.Event()
        task = asyncio.create_task(store.run(stop, shutdown_timeout=5))
        try:
            await until(lambda: _level(tmp_path, SNAPSHOT_LEVEL) and _level(tmp_path, 1))
            assert runner.lifecycle is not None
            await runner.lifecycle.compact(2)
            await runner.lifecycle.compact(3)
        finally:
            stop.set()
            await task

    async def second_run() -> tuple[list[int | str], list[str]]:
        spec = _spec(tmp_path)
        listed: list[int | str] = []
        real = spec.client.ltx_files
        real_all = FileReplicaClient.all_ltx_files

        async def counted(level: int, *a: Any, **kw: Any) -> Any:
            listed.append(level)
            return await real(level, *a, **kw)

        async def counted_all(client: FileReplicaClient) -> Any:
            listed.append("every level")
            return await real_all(client)

        spec.client.ltx_files = counted  # type: ignore[method-assign]
        events: list[str] = []
        store = Store([spec], hook=lambda event, fields: events.append(event))
        runner = store.runners[0]
        with patch.object(FileReplicaClient, "all_ltx_files", counted_all):
            await store.open()
            stop = asyncio.Event()
            task = asyncio.create_task(store.run(stop, shutdown_timeout=5))
            try:
                await until(lambda: runner.opened and runner.replica.pos >= runner.db.pos > 0)
                await asyncio.sleep(1.0)  # many ticks: the lifecycle has started and run what it found due
                return list(listed), events
            finally:
                stop.set()
                await task

    asyncio.run(first_run())
    assert [len(_level(tmp_path, lvl)) for lvl in (1, 2, 3, SNAPSHOT_LEVEL)] == [1, 1, 1, 1]
    listed, events = asyncio.run(second_run())
    assert listed == ["every level"]  # the opening listing, once
    assert "compaction" not in events and "snapshot" not in events
