"""A tick of many databases lets the event loop run between slices, not after the last one.

A thousand databases ticked in one go held the loop for tens of milliseconds every second, and the
WAL events of busy databases arriving meanwhile waited for the whole tick.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from lifeboat.agent.scheduler import Scheduler

COUNT = 1000  # databases of one agent at the scale measured


class Item:
    """A ticked item that counts its ticks into a shared list and runs `on_tick` if given."""

    def __init__(self, ticked: list[int], on_tick: Callable[[], None] | None = None) -> None:
        self.ticked = ticked
        self.on_tick = on_tick

    def tick(self, now: float) -> None:
        self.ticked.append(1)
        if self.on_tick is not None:
            self.on_tick()

    @property
    def tick_interval(self) -> float:
        return 0.001  # the first tick comes at once


async def one_tick(scheduler: Scheduler, items: list[Item], stop: asyncio.Event) -> None:
    """Run `scheduler` with `items` for the one tick during which `stop` is set."""
    for item in items:
        scheduler.add(item)
    await scheduler.run(stop)


def test_a_tick_of_many_items_yields_to_the_loop_before_the_last() -> None:
    async def scenario() -> tuple[int, list[int]]:
        ticked: list[int] = []
        seen: list[int] = []  # how many were ticked when the loop got to run a ready callback
        stop = asyncio.Event()

        def first() -> None:
            stop.set()  # this tick is the last
            asyncio.get_running_loop().call_soon(lambda: seen.append(len(ticked)))

        items = [Item(ticked, first)] + [Item(ticked) for _ in range(COUNT - 1)]
        await one_tick(Scheduler(), items, stop)
        return len(ticked), seen

    ticked, seen = asyncio.run(scenario())
    assert ticked == COUNT
    assert seen and seen[0] < COUNT // 10  # the loop ran early in the tick, not after it


def test_an_item_discarded_during_a_tick_is_not_ticked() -> None:
    async def scenario() -> int:
        late: list[int] = []
        stop = asyncio.Event()
        scheduler = Scheduler()
        last = Item(late)

        def first() -> None:
            stop.set()
            # Discarded from the loop while the tick runs, as a database halted meanwhile.
            asyncio.get_running_loop().call_soon(scheduler.discard, last)

        items = [Item([], first)] + [Item([]) for _ in range(COUNT - 2)] + [last]
        await one_tick(scheduler, items, stop)
        return len(late)

    assert asyncio.run(scenario()) == 0
