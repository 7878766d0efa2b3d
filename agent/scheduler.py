"""One timer for the periodic work of every database of a store, and work started only on demand.

A thousand databases with a task (or a sleeping timer) each for their WAL poll, lease renewal and
lifecycle cost the event loop a wakeup per database per interval. Here one loop looks at every
database on each tick (a few comparisons and a stat) and starts a task only for work that is due;
capture and upload run as `OnDemand` jobs, so an idle database holds no task at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

MAX_TICK = 1.0  # the timers' resolution: lease renewals are taken up to this much early
# Items ticked between two yields to the event loop. A tick of a database is a stat or two and a few
# comparisons (tens of microseconds): a thousand in one go held the loop for tens of milliseconds each second,
# and the WAL events of busy databases waited behind them. A slice holds it for a millisecond or two.
TICK_SLICE = 50


class Ticked(Protocol):
    """What the scheduler looks at on every tick."""

    def tick(self, now: float) -> None:
        """Start whatever is due at `now` (monotonic); never blocks."""

    @property
    def tick_interval(self) -> float:
        """How often it wants to be looked at (seconds)."""


class Scheduler:
    """Ticks every registered item, at the shortest interval any of them asks for (at most MAX_TICK)."""

    def __init__(self) -> None:
        self._items: dict[int, Ticked] = {}
        self._interval: float | None = None
        self._waiting = MAX_TICK  # the timeout of the loop's current wait
        self._wake = asyncio.Event()

    def add(self, item: Ticked) -> None:
        """Tick `item` from the next tick on.

        O(1): databases are added one by one while the scheduler runs (a thousand in an opening
        wave), so an addition neither recomputes the interval over every item nor wakes the loop
        for a tick of all of them, unless it asks for a shorter interval than the loop waits.
        """
        self._items[id(item)] = item
        if self._interval is not None:
            self._interval = min(self._interval, item.tick_interval)
        if item.tick_interval < self._waiting:
            self._wake.set()

    def discard(self, item: Ticked) -> None:
        """Tick `item` no more."""
        removed = self._items.pop(id(item), None) is not None
        if removed and self._interval is not None and item.tick_interval <= self._interval:
            self._interval = None  # it may have been the shortest

    @property
    def interval(self) -> float:
        """The shortest interval any item asks for (recomputed when items come and go)."""
        if self._interval is None:
            self._interval = min([MAX_TICK, *(i.tick_interval for i in self._items.values())])
        return self._interval

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop`."""
        while not stop.is_set():
            self._wake.clear()
            self._waiting = self.interval
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            _done, pending = await asyncio.wait(waiters, timeout=self._waiting, return_when=asyncio.FIRST_COMPLETED)
            for w in pending:
                w.cancel()
            await self._tick_all()

    async def _tick_all(self) -> None:
        """Tick every item, `TICK_SLICE` at a time, letting the loop run what is ready in between.
        An item discarded meanwhile is not ticked."""
        items = list(self._items.items())
        for start in range(0, len(items), TICK_SLICE):
            if start:
                await asyncio.sleep(0)
            now = time.monotonic()
            for key, item in items[start:start + TICK_SLICE]:
                if self._items.get(key) is item:
                    item.tick(now)


class OnDemand:
    """A job run when asked (`set`, an Event's name, so callbacks stay `x.set`), one run at a time,
    once more if asked again meanwhile; between runs there is no task. Asks before `open` are kept
    for it; after `close`, ignored."""

    def __init__(self, job: Callable[[], Awaitable[None]]) -> None:
        self._job = job
        self._asked = False
        self._task: asyncio.Task[None] | None = None
        self._open = False

    def set(self) -> None:
        """Ask for a run (started at once unless one is under way)."""
        self._asked = True
        self._launch()

    def open(self) -> None:
        """Start running on demand (at once if asked already)."""
        self._open = True
        self._launch()

    @property
    def busy(self) -> bool:
        """A run is under way or about to start."""
        return self._task is not None

    def _launch(self) -> None:
        if self._open and self._asked and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._asked and self._open:
                self._asked = False
                await self._job()
        finally:
            self._task = None

    async def close(self) -> None:
        """No more runs; the one under way is cancelled (unless it is the caller)."""
        self._open = False
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class Gate:
    """Room for background work (compaction, snapshots, retention): a few jobs at a time, none while
    priority work is under way (databases being opened: their first snapshots come first)."""

    def __init__(self, limit: int) -> None:
        self._room = asyncio.Semaphore(limit)
        self._priority = 0
        self._clear = asyncio.Event()
        self._clear.set()

    @contextlib.contextmanager
    def priority(self) -> Iterator[None]:
        """Hold background work back while the block runs."""
        self._priority += 1
        self._clear.clear()
        try:
            yield
        finally:
            self._priority -= 1
            if self._priority == 0:
                self._clear.set()

    async def run(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run `job` when there is room and no priority work."""
        while True:
            await self._clear.wait()
            async with self._room:
                if self._clear.is_set():
                    await job()
                    return


class Jobs:
    """Background tasks of one database started by its timers, cancelled together when it stops."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run `job` as a task of its own."""

        async def run() -> None:
            await job()

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel every task still running (except the caller's own) and wait for them."""
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
