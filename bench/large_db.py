"""Issue #5, item 3: a database larger than 1 GiB (4096-byte pages, so the lock page 262145 is
crossed) replicates, compacts to L1..L3, snapshots to L9, and restores byte-identical (lock page
aside) with both `lifeboat` and `litestream`; the agent's peak RSS (VmHWM) stays under 200 MB.

    .venv/bin/python bench/large_db.py [--size-mib 1100] [--dir /tmp/x] [--keep]

Prints one JSON object. `tests/e2e/test_lifecycle.py` runs the same `run()` at 1100 MiB.

Steps: build the database with one bulk transaction (journal off, synchronous off, then WAL);
start `lifeboat replicate` (levels 1 s / 2 s / 3 s; one snapshot at start-up); while it runs,
update rows on both sides of the lock page and append past it; wait until L1, L2 and L3 reach the
final TXID; stop; `replicate -once -force-snapshot` writes an L9 snapshot at the final TXID (the
application keeps its connection, so the WAL persists and the agent resumes incrementally); restore
with both tools and compare every page but the lock page with the checkpointed source.
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
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import LIFEBOAT, LITESTREAM, Agent, file_url

PAGE_SIZE = 4096
LOCK_PAGE = 0x40000000 // PAGE_SIZE + 1  # 262145
ROW_BYTES = 3900  # one row per page, incompressible


def vmhwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


class HWMWatcher(threading.Thread):
    """Polls a process's VmHWM (its lifetime peak RSS) until it exits."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.kb = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.kb = max(self.kb, vmhwm_kb(self.pid))
            time.sleep(0.05)


def build(db: Path, size_mib: int) -> dict[str, Any]:
    t0 = time.monotonic()
    n = int(size_mib * 2**20 / PAGE_SIZE * 0.985)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB NOT NULL)")
    conn.execute("BEGIN")
    conn.execute(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?) "
        "INSERT INTO t (b) SELECT randomblob(?) FROM s",
        (n, ROW_BYTES),
    )
    conn.execute("COMMIT")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    conn.close()
    assert mode == "wal", mode
    pages = os.path.getsize(db) // PAGE_SIZE
    return {"rows": n, "pages": pages, "build_seconds": round(time.monotonic() - t0, 1)}


def ltx_levels(replica: Path) -> dict[int, list[tuple[int, int]]]:
    out: dict[int, list[tuple[int, int]]] = {}
    root = replica / "ltx"
    for level in os.listdir(root) if root.is_dir() else []:
        names = sorted(n for n in os.listdir(root / level) if n.endswith(".ltx") and len(n) == 37)
        if names:
            out[int(level)] = [(int(n[:16], 16), int(n[17:33], 16)) for n in names]
    return out


def top(levels: dict[int, list[tuple[int, int]]], level: int) -> int:
    return max((hi for _, hi in levels.get(level, [])), default=0)


def wait(pred: Any, timeout: float, what: str, agent: Agent | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if agent is not None and not agent.alive():
            raise RuntimeError(f"agent exited while waiting for {what}:\n{agent.output()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def compare_pages(a: Path, b: Path) -> str:
    """'identical' when every page but the lock page matches; else the first difference."""
    sa, sb = os.path.getsize(a), os.path.getsize(b)
    if sa != sb:
        return f"size {sa} != {sb}"
    lock_off = (LOCK_PAGE - 1) * PAGE_SIZE
    chunk = 256 * PAGE_SIZE
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, end in ((0, min(lock_off, sa)), (lock_off + PAGE_SIZE, sa)):
            fa.seek(start)
            fb.seek(start)
            pos = start
            while pos < end:
                n = min(chunk, end - pos)
                da, db_ = fa.read(n), fb.read(n)
                if da != db_:
                    for i in range(0, n, PAGE_SIZE):
                        if da[i : i + PAGE_SIZE] != db_[i : i + PAGE_SIZE]:
                            return f"page {(pos + i) // PAGE_SIZE + 1} differs"
                pos += n
    return "identical"


def run_with_hwm(cmd: list[str], timeout: float = 600) -> tuple[subprocess.CompletedProcess[str], int, float]:
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watch = HWMWatcher(proc.pid)
    watch.start()
    out, err = proc.communicate(timeout=timeout)
    watch.done.set()
    watch.join()
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} exited {proc.returncode}: {err[-2000:]}")
    return done, watch.kb, round(time.monotonic() - t0, 1)


def run(workdir: Path, size_mib: int = 1100) -> dict[str, Any]:
    workdir = Path(workdir)
    db = workdir / "big.db"
    replica = workdir / "replica"
    url = file_url(replica)
    result: dict[str, Any] = {"size_mib": size_mib, "lock_page": LOCK_PAGE}
    result.update(build(db, size_mib))
    conf = workdir / "litestream.yml"
    conf.write_text(
        "levels: [{interval: 1s}, {interval: 2s}, {interval: 3s}]\n"
        "snapshot: {interval: 1h, retention: 24h}\n"
        f"dbs: [{{path: {db}, replica: {{url: {url}}}}}]\n"
    )
    app = sqlite3.connect(db, isolation_level=None, timeout=60)  # holds the WAL open throughout
    app.execute("PRAGMA busy_timeout = 60000")
    rows = result["rows"]

    def change(ids: tuple[int, ...]) -> None:
        app.execute("BEGIN IMMEDIATE")
        for i in ids:
            app.execute("UPDATE t SET b = randomblob(?) WHERE id = ?", (ROW_BYTES, i))
        app.execute("COMMIT")

    t0 = time.monotonic()
    # The full L0 snapshot first, from a short-lived agent, and changes on both sides of the lock
    # page before the long-running agent starts: its start-up L1 compaction then merges the 1 GiB
    # file with newer versions of pages around the lock page.
    _, kb, secs = run_with_hwm([*LIFEBOAT, "replicate", "-config", str(conf), "-once"])
    result["initial_l0_seconds"] = secs
    result["initial_l0_vmhwm_mb"] = round(kb / 1024, 1)
    change((1, 2, LOCK_PAGE - 40, LOCK_PAGE - 2, LOCK_PAGE + 5, rows - 1))
    change((3, LOCK_PAGE + 90))
    t_agent = time.monotonic()
    with Agent.lifeboat("-config", str(conf), log=workdir / "agent.log") as agent:
        watch = HWMWatcher(agent.proc.pid)
        watch.start()
        try:
            wait(lambda: top(ltx_levels(replica), 9) >= 1, 600, "the start-up L9 snapshot", agent)
            result["startup_l9_seconds"] = round(time.monotonic() - t_agent, 1)
            # More changes while it runs, and growth past the end.
            for ids in ((4, 5), (LOCK_PAGE - 3, LOCK_PAGE + 1), (rows - 2,)):
                change(ids)
                time.sleep(0.3)
            app.execute("INSERT INTO t (b) SELECT randomblob(?) FROM t WHERE id <= 500", (ROW_BYTES,))
            t1 = time.monotonic()
            final = 0
            while True:  # until the replica's L0 stops moving
                time.sleep(1.0)
                cur = top(ltx_levels(replica), 0)
                if cur == final and cur > 1:
                    break
                final = cur
            result["final_txid"] = final
            for lvl in (1, 2, 3):
                wait(lambda lvl=lvl: top(ltx_levels(replica), lvl) >= final, 600, f"L{lvl} at txid {final}", agent)
            result["compaction_seconds"] = round(time.monotonic() - t1, 1)
            result["agent_vmhwm_mb"] = round(max(watch.kb, vmhwm_kb(agent.proc.pid)) / 1024, 1)
        finally:
            watch.done.set()
        code = agent.stop(timeout=300)
        if code != 0:
            raise RuntimeError(f"agent exited {code}:\n{agent.output()[-3000:]}")
    # The L9 snapshot at the final TXID, from a fresh agent process (resuming, not re-snapshotting L0).
    _, kb, secs = run_with_hwm([*LIFEBOAT, "replicate", "-config", str(conf), "-once", "-force-snapshot"])
    result["snapshot_once_vmhwm_mb"] = round(kb / 1024, 1)
    result["snapshot_once_seconds"] = secs
    result["agent_vmhwm_mb"] = max(result["agent_vmhwm_mb"], result["snapshot_once_vmhwm_mb"])
    levels = ltx_levels(replica)
    result["levels"] = set(levels)
    # Informational: whether L1's first file merged the full snapshot with the pre-start changes
    # (it does not when the start-up compaction runs before the agent's first capture is uploaded).
    result["l1_first_file"] = levels[1][0]
    result["l9_at_final"] = top(levels, 9) >= result["final_txid"]
    if not result["l9_at_final"]:
        raise RuntimeError(f"no L9 snapshot at txid {result['final_txid']}: {levels.get(9)}")
    app.close()
    # The source as of the final TXID: checkpoint the WAL into the file.
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    result["source_integrity"] = conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()
    result["pages"] = os.path.getsize(db) // PAGE_SIZE
    result["restored"] = {}
    for name, cmd in (("lifeboat", [*LIFEBOAT, "restore"]), ("litestream", [str(LITESTREAM), "restore"])):
        out = workdir / f"{name}.db"
        _, kb, secs = run_with_hwm([*cmd, "-o", str(out), url])
        result[f"{name}_restore_seconds"] = secs
        result[f"{name}_restore_vmhwm_mb"] = round(kb / 1024, 1)
        result["restored"][name] = compare_pages(out, db)
        c = sqlite3.connect(f"file:{out}?mode=ro", uri=True)
        result[f"{name}_integrity"] = c.execute("PRAGMA integrity_check").fetchone()[0]
        c.close()
        out.unlink()
    result["total_seconds"] = round(time.monotonic() - t0, 1)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1100)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="lifeboat-large-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run(work, args.size_mib)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["levels"] = sorted(result["levels"])
    print(json.dumps(result, indent=2))
    ok = (
        result["restored"] == {"lifeboat": "identical", "litestream": "identical"}
        and result["agent_vmhwm_mb"] < 200
        and result["pages"] > LOCK_PAGE
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
