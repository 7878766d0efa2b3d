"""Peak RSS of the agent while it ships one transaction that rewrites every page: a VACUUM.

    .venv/bin/python bench/vacuum_rss.py [--size-mib 1024] [--dir /tmp/x] [--keep]

Prints one JSON object. Steps: build the database (bench/large_db.py's `build`: incompressible rows,
one per page), delete a tenth of the rows, start `lifeboat replicate` (default levels) and wait for
its start-up L0 and L9 snapshots, note its VmHWM, run VACUUM from the application's connection
(kept open, so the WAL persists), wait until the replica's L0 stops moving, note VmHWM again, stop,
and restore with `lifeboat` and `litestream` to compare every page but the lock page with the
checkpointed source. The WAL scan must keep offsets only, so the peak must not follow the
transaction's size. If neither a local nor a remote L0 file appears for 120 s after the
VACUUM committed, the agent missed the commit: the WAL's mtime is touched (as any later write would)
and `nudged_after_seconds` says when.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from large_db import LIFEBOAT, LITESTREAM, Agent, HWMWatcher, build, compare_pages, file_url, ltx_levels, top, wait

NUDGE_AFTER = 120.0  # seconds without a new L0, local or remote, after the VACUUM committed


def run(workdir: Path, size_mib: int) -> dict[str, Any]:
    db = workdir / "big.db"
    replica = workdir / "replica"
    url = file_url(replica)
    result: dict[str, Any] = {"size_mib": size_mib}
    result.update(build(db, size_mib))
    conf = workdir / "litestream.yml"
    conf.write_text(f"dbs: [{{path: {db}, replica: {{url: {url}}}}}]\n")
    app = sqlite3.connect(db, isolation_level=None, timeout=60)
    app.execute("PRAGMA busy_timeout = 60000")
    app.execute("DELETE FROM t WHERE id % 10 = 0")
    with Agent.lifeboat("-config", str(conf), log=workdir / "agent.log") as agent:
        watch = HWMWatcher(agent.proc.pid)
        watch.start()
        try:
            t0 = time.monotonic()
            wait(lambda: top(ltx_levels(replica), 9) >= 1, 900, "the start-up L9 snapshot", agent)
            result["startup_seconds"] = round(time.monotonic() - t0, 1)
            before_txid = top(ltx_levels(replica), 0)
            time.sleep(2.0)
            result["vmhwm_before_vacuum_mb"] = round(watch.kb / 1024, 1)
            t1 = time.monotonic()
            app.execute("VACUUM")
            result["vacuum_seconds"] = round(time.monotonic() - t1, 1)
            result["wal_mib"] = round(os.path.getsize(f"{db}-wal") / 2**20, 1)
            final = before_txid
            moved_at = time.monotonic()
            result["nudged_after_seconds"] = None
            while True:  # until the replica's L0 holds the VACUUM and stops moving
                time.sleep(2.0)
                cur = top(ltx_levels(replica), 0)
                if cur == final and cur > before_txid:
                    break
                if cur != final:
                    moved_at = time.monotonic()
                local = len(os.listdir(db.parent / ".big.db-litestream" / "ltx" / "0"))
                if cur == before_txid and local <= 1 and time.monotonic() - moved_at > NUDGE_AFTER:
                    # The commit went unnoticed (no L0 being written either): touch the WAL as any
                    # later write would, and say so, instead of waiting forever.
                    os.utime(f"{db}-wal")
                    result["nudged_after_seconds"] = round(time.monotonic() - t1, 1)
                    moved_at = time.monotonic()
                final = cur
                if not agent.alive():
                    raise RuntimeError(f"agent exited:\n{agent.output()[-3000:]}")
            result["ship_seconds"] = round(time.monotonic() - t1, 1)
            result["vmhwm_after_vacuum_mb"] = round(watch.kb / 1024, 1)
        finally:
            watch.done.set()
        code = agent.stop(timeout=300)
        if code != 0:
            raise RuntimeError(f"agent exited {code}:\n{agent.output()[-3000:]}")
    app.close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    result["restored"] = {}
    for name, cmd in (("lifeboat", [*LIFEBOAT, "restore"]), ("litestream", [str(LITESTREAM), "restore"])):
        out = workdir / f"{name}.db"
        subprocess.run([*cmd, "-o", str(out), url], check=True, capture_output=True, timeout=900)
        result["restored"][name] = compare_pages(out, db)
        out.unlink()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="lifeboat-vacuum-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run(work, args.size_mib)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0 if result["restored"] == {"lifeboat": "identical", "litestream": "identical"} else 1


if __name__ == "__main__":
    sys.exit(main())
