"""How long an event arriving at a random moment waits for the agent's event loop, with N idle
databases in one store (file replicas, no lifecycle), and the process CPU meanwhile.

A thread wakes the loop at random instants (as an inotify event of a busy database does) and
notes how late each callback runs. Run from a checkout, to compare builds in the same minutes:
`.venv/bin/python -P bench/loop_stall.py --databases 1000 --seconds 60`. Not part of the harness.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from lifeboat.agent.storage import new_client
from lifeboat.agent.store import DatabaseSpec, Store


def cpu_seconds() -> float:
    """User and system CPU of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_specs(root: Path, n: int) -> list[DatabaseSpec]:
    """`n` one-row databases in WAL mode under `root`, each with a file replica of its own."""
    specs = []
    for i in range(n):
        db = root / f"db{i}.db"
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t(x)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.close()
        specs.append(DatabaseSpec(str(db), new_client({"url": f"file://{root / 'replica' / str(i)}"})))
    return specs


def waits(loop: asyncio.AbstractEventLoop, done: threading.Event, out: list[float]) -> None:
    """Until `done`: wake `loop` every 0-10 ms and note in `out` how long each callback waited."""
    rnd = random.Random(1)
    while not done.is_set():
        time.sleep(rnd.uniform(0, 0.01))
        t = time.monotonic()
        loop.call_soon_threadsafe(lambda t=t: out.append(time.monotonic() - t))


async def measure(root: Path, n: int, seconds: float) -> str:
    specs = make_specs(root, n)
    store = Store([])
    stop = asyncio.Event()
    task = asyncio.create_task(store.run(stop, shutdown_timeout=5))
    t0 = time.monotonic()
    await asyncio.gather(*(store.add(s) for s in specs))
    opened = time.monotonic() - t0
    await asyncio.sleep(5)  # the first syncs' uploads and checkpoints
    late: list[float] = []
    done = threading.Event()
    thread = threading.Thread(target=waits, args=(asyncio.get_running_loop(), done, late))
    c0, w0 = cpu_seconds(), time.monotonic()
    thread.start()
    await asyncio.sleep(seconds)
    done.set()
    thread.join()
    c1, w1 = cpu_seconds(), time.monotonic()
    stop.set()
    await task
    late.sort()

    def ms(q: float) -> float:
        return late[min(len(late) - 1, int(q * len(late)))] * 1000

    return (f"{n} databases opened in {opened:.1f} s; {len(late)} events, wait ms p50 {ms(0.5):.2f} "
            f"p99 {ms(0.99):.2f} p99.9 {ms(0.999):.2f} max {late[-1] * 1000:.2f}; "
            f"CPU {60 * (c1 - c0) / (w1 - w0):.2f} s/min; load {os.getloadavg()[0]:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--databases", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=60.0, help="the measured window (60: every lease renewal once)")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="loop-stall-"))
    try:
        print(asyncio.run(measure(root, args.databases, args.seconds)))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
