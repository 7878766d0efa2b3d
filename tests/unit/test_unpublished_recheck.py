"""A writer's frames that the wal-index does not publish yet: the agent must keep looking until they
are published, however many looks it takes, even with no further WAL event and the poll far away.

A long transaction spills frames into the WAL (each write an inotify event, each capture finding
only unpublished frames); its commit frame's event can arrive while the writer has yet to publish
it. If the agent gave up looking after a fixed number of rechecks, the commit would wait for the
application's next write: on an idle database, forever.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from helpers import create_db, l0_txids, until, write_batch
from lifeboat.agent.db import SyncResult
from lifeboat.agent.storage import new_client
from lifeboat.agent.store import DatabaseRunner, DatabaseSpec

HIDDEN = 9  # more captures that see only unpublished frames than any fixed recheck budget


def test_commit_published_late_still_ships(tmp_path: Path) -> None:
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    create_db(db)

    async def scenario() -> list[int]:
        spec = DatabaseSpec(str(db), new_client({"url": f"file://{replica}"}), monitor_interval=3600.0)
        runner = DatabaseRunner(spec)
        await runner.open()
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        await until(lambda: l0_txids(replica), 10)  # the initial snapshot shipped
        shipped = len(l0_txids(replica))
        real_sync, hidden = runner.db.sync, [HIDDEN]

        def sync() -> SyncResult:
            # The committed frames are in the WAL but, as far as this capture can tell, not yet
            # published: exactly what a capture racing the writer's wal-index update sees.
            if hidden[0] > 0:
                hidden[0] -= 1
                return SyncResult(unpublished=True)
            return real_sync()

        runner.db.sync = sync  # type: ignore[method-assign]
        await asyncio.to_thread(write_batch, db, 1)  # one WAL event, then silence
        try:
            await until(lambda: len(l0_txids(replica)) > shipped, 30)
        finally:
            stop.set()
            await task
            await runner.shutdown(5)
        return [hidden[0]]

    assert asyncio.run(scenario()) == [0]

