"""A WAL written in a tight loop wakes the agent's event loop a few times per gathering interval, not
once per write: a tenant committing thousands of times a second raised an inotify event per commit in
each instance watching its directory, each read and dispatched on the loop every other database's
captures and uploads run on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from lifeboat.agent.watch import WAL_EVENTS_GATHER, SharedWatcher

WRITES = 5000
# Appends with a pause between them, as commits arrive; prints how long they took in all.
WRITER = """
import sys, time
t0 = time.monotonic()
with open(sys.argv[1], "ab", buffering=0) as f:
    for _ in range(int(sys.argv[2])):
        f.write(b"x" * 16)
        time.sleep(0.0002)
print(time.monotonic() - t0)
"""


def test_a_file_written_in_a_tight_loop_is_looked_at_a_few_times_per_gathering_interval(tmp_path: Path) -> None:
    wal = tmp_path / "app.db-wal"
    wal.write_bytes(b"")

    async def scenario() -> tuple[int, float]:
        watcher = SharedWatcher()
        calls = [0]

        def changed() -> None:
            calls[0] += 1

        watcher.add(str(wal), changed)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", WRITER, str(wal), str(WRITES), stdout=subprocess.PIPE
            )
            out, _ = await proc.communicate()
            await asyncio.sleep(4 * WAL_EVENTS_GATHER)  # the last events are read
            return calls[0], float(out)
        finally:
            watcher.close()

    calls, seconds = asyncio.run(scenario())
    assert calls > 0
    # At most two reads per interval (one event each: the kernel merges a file's repeated events
    # while they wait), and the reads of the last, unpaused interval.
    assert calls <= 2 * (seconds / WAL_EVENTS_GATHER + 4), (calls, seconds)
