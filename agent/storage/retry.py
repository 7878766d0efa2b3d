"""Retrying transient storage failures, and the thread bridge the blocking SDKs share.

`retry` is the one backoff policy of the agent (exponential, full jitter, capped): backends use it
around single requests, callers around whole operations. Only `Transient` errors are retried;
everything else (missing objects, lost conditional writes, bad credentials) surfaces at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

from . import StorageError, Transient

T = TypeVar("T")

_DONE = object()


async def retry(op: Callable[[], Awaitable[T]], *, attempts: int = 5, base: float = 0.1, cap: float = 10.0) -> T:
    """Await `op()` until it succeeds, retrying `Transient` errors up to `attempts` tries in all.

    The wait before try n+1 is uniform in [0, min(cap, base * 2**n)] ("full jitter"), which spreads
    a fleet of agents that all failed at the same moment instead of having them retry in lockstep.
    The last `Transient` error is re-raised when the tries run out.
    """
    if attempts < 1:
        raise ValueError("retry: attempts must be at least 1")
    for attempt in range(attempts):
        try:
            return await op()
        except Transient:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(random.uniform(0, min(cap, base * 2**attempt)))
    raise AssertionError("unreachable")


async def iterate_in_thread(
    make: Callable[[], Iterator[bytes]], translate: Callable[[BaseException], StorageError]
) -> AsyncIterator[bytes]:
    """Drive a blocking chunk iterator from worker threads, one `next()` per chunk.

    `make` runs in a thread too (opening a download is itself a request). SDK exceptions go
    through `translate` so callers only ever see the storage error types. The iterator is closed
    when the consumer stops early, which releases the SDK's connection.
    """

    def step(it: Iterator[bytes]) -> object:
        return next(it, _DONE)

    try:
        it = await asyncio.to_thread(make)
    except StorageError:
        raise
    except Exception as exc:
        raise translate(exc) from exc
    try:
        while True:
            try:
                chunk = await asyncio.to_thread(step, it)
            except StorageError:
                raise
            except Exception as exc:
                raise translate(exc) from exc
            if chunk is _DONE:
                return
            assert isinstance(chunk, bytes | bytearray | memoryview)
            yield bytes(chunk)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            await asyncio.to_thread(close)
