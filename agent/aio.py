"""Small asyncio helpers shared by the store and the lifecycle."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


async def run_until(stop: asyncio.Event, coros: list[Coroutine[Any, Any, Any]]) -> None:
    """Run background loops until `stop` is set, then cancel them and wait for them to end."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
