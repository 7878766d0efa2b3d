"""Opening a database asks its replica for no more than it needs, and not one request at a time.

At start-up every database probes its replica once (before taking the lease) and lists each of its
ten levels to learn the replica's position. On an object store each is a round trip: a second
probe was a wasted request per database, and the ten listings one after another were most of a
database's time to open.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from helpers import create_db, write_batch
from lifeboat.agent.storage import new_client
from lifeboat.agent.store import DatabaseRunner, DatabaseSpec


class Slow:
    """A replica client whose listings take a while; counts probes and concurrent listings."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.inits = 0
        self.listing = 0
        self.peak = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def init(self) -> None:
        self.inits += 1
        await self.inner.init()

    async def ltx_files(self, *a: Any, **kw: Any) -> Any:
        self.listing += 1
        self.peak = max(self.peak, self.listing)
        try:
            await asyncio.sleep(0.02)
            return await self.inner.ltx_files(*a, **kw)
        finally:
            self.listing -= 1


def test_open_probes_once_and_lists_the_levels_at_once(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    create_db(db)
    write_batch(db, 1, rows=2)
    client = Slow(new_client({"url": f"file://{tmp_path / 'replica'}"}))

    async def scenario() -> None:
        runner = DatabaseRunner(DatabaseSpec(str(db), client))  # type: ignore[arg-type]
        try:
            await runner.open()
        finally:
            await runner.lease.release()
            runner.db.close()

    asyncio.run(scenario())
    assert client.inits == 1
    assert client.peak == 10  # L0..L9 listed together (a client without a listing of every level)
