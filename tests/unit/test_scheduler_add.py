"""Adding databases to a running scheduler costs each addition O(1), not a tick of every database.

A directory of a thousand databases is opened one after another while the scheduler runs: an
addition that woke the scheduler for a full tick (and recomputed the shortest interval over every
item) made the opening wave quadratic in the number of databases.
"""

from __future__ import annotations

import asyncio

from lifeboat.agent.scheduler import Scheduler


class Counted:
    """A ticked item that counts its ticks."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.ticks = 0

    def tick(self, now: float) -> None:
        self.ticks += 1

    @property
    def tick_interval(self) -> float:
        return self.interval


def test_additions_do_not_tick_every_item() -> None:
    async def scenario() -> tuple[int, float]:
        scheduler = Scheduler()
        first = Counted(1.0)
        scheduler.add(first)
        stop = asyncio.Event()
        task = asyncio.create_task(scheduler.run(stop))
        await asyncio.sleep(0)  # the first tick
        for _ in range(200):  # an opening wave: one addition per loop iteration
            scheduler.add(Counted(1.0))
            await asyncio.sleep(0)
        ticks = first.ticks
        stop.set()
        await task
        return ticks, scheduler.interval

    ticks, interval = asyncio.run(scenario())
    assert ticks <= 2  # the first tick, and one more at most if the wave outlasted the interval
    assert interval == 1.0


def test_a_shorter_interval_takes_effect_at_once() -> None:
    async def scenario() -> int:
        scheduler = Scheduler()
        scheduler.add(Counted(1.0))
        stop = asyncio.Event()
        task = asyncio.create_task(scheduler.run(stop))
        await asyncio.sleep(0)
        fast = Counted(0.01)
        scheduler.add(fast)
        for _ in range(100):  # loop iterations, no wall time: the wait of 1 s is cut short
            if fast.ticks:
                break
            await asyncio.sleep(0)
        ticks = fast.ticks  # before the stop, whose wake-up ticks every item once more
        stop.set()
        await task
        return ticks

    assert asyncio.run(scenario()) >= 1


def test_discarding_the_shortest_lengthens_the_interval() -> None:
    scheduler = Scheduler()
    slow, fast = Counted(0.5), Counted(0.01)
    scheduler.add(slow)
    scheduler.add(fast)
    assert scheduler.interval == 0.01
    scheduler.discard(fast)
    assert scheduler.interval == 0.5
