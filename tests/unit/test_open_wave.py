"""A wave of databases added at once (a directory's databases at start-up) is opened many at a time,
never more than the store's bound, and every one of them gets its first snapshot.

Eight at a time serialised the cold start of 1,000 databases on the hand-offs between the event
loop and the worker threads; the bound is there for descriptors and memory, not to queue the work.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from helpers import file_replicated_specs
from lifeboat.agent import store as store_mod
from lifeboat.agent.store import DatabaseRunner, DatabaseSpec, Store

DATABASES = 80


def _specs(tmp_path: Path, n: int) -> list[DatabaseSpec]:
    return file_replicated_specs(tmp_path, n, dynamic=True)


def _run_wave(store: Store, specs: list[DatabaseSpec], monkeypatch) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Add every spec at once; the most opens that were under way together, and how many databases
    had their first L0 file captured once every addition returned."""
    inflight = [0, 0]  # now, peak
    real_open = DatabaseRunner.open

    async def counted(self: DatabaseRunner) -> None:
        inflight[0] += 1
        inflight[1] = max(inflight[1], inflight[0])
        try:
            await asyncio.sleep(0.02)  # long enough for every open the bound lets in to overlap
            await real_open(self)
        finally:
            inflight[0] -= 1

    monkeypatch.setattr(DatabaseRunner, "open", counted)

    async def scenario() -> int:
        try:
            await asyncio.gather(*(store.add(s) for s in specs))
            return sum(1 for r in store.runners if r.opened and r.db.pos > 0 and r.db.l0_path(1).exists())
        finally:
            await store.close()

    captured = asyncio.run(scenario())
    return inflight[1], captured


def test_a_wave_is_opened_many_at_a_time(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    specs = _specs(tmp_path, DATABASES)
    store = Store([])
    peak, captured = _run_wave(store, specs, monkeypatch)
    assert 32 <= peak <= store_mod.OPEN_CONCURRENCY
    assert captured == DATABASES


def test_the_bound_holds(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    specs = _specs(tmp_path, 20)
    store = Store([], open_concurrency=3)
    assert _run_wave(store, specs, monkeypatch) == (3, 20)
