"""Issue #5: the replica's lifecycle under a live workload, with intervals shortened in the config.

Levels 2 s / 5 s / 10 s, a snapshot every 15 s kept 30 s, L0 kept 5 s (checked every 1 s). A writer
commits every ~0.2 s for WORKLOAD seconds (120 s, as the issue asks: several snapshot-retention rounds that
delete, every level and L9 filled, and L0 retention run ~110 times) and logs each commit's time.
Then: files in L1, L2, L3 and L9; deleted files were deleted by the rules; object counts and bytes
within bounds derived from the config; both tools restore the source; point-in-time restores land
within one L1 interval of the requested time; a time older than anything retained fails in one line.

The large-database case (> 1 GiB, crossing the lock page) shares bench/large_db.py.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    Agent,
    assert_same_db,
    create_db,
    file_url,
    integrity,
    lifeboat,
    litestream,
    no_traceback,
    ok,
    rfc3339_ms,
    rows,
    wait_replica_started,
)

WORKLOAD = 120.0  # seconds: the 2-minute workload
LEVELS = [2.0, 5.0, 10.0]
SNAPSHOT_INTERVAL = 15.0
RETENTION = 30.0
L0_RETENTION = 5.0
L0_CHECK = 1.0
COMMIT_PAUSE = 0.2
SLACK = 1.0  # one sync plus scheduling

CONFIG = """\
levels: [{{interval: 2s}}, {{interval: 5s}}, {{interval: 10s}}]
snapshot: {{interval: 15s, retention: 30s}}
l0-retention: 5s
l0-retention-check-interval: 1s
dbs: [{{path: {db}, replica: {{url: {url}}}}}]
"""


def _scan(replica: Path) -> dict[int, dict[str, tuple[int, float]]]:
    """level -> name -> (size, mtime) straight from the replica directory."""
    out: dict[int, dict[str, tuple[int, float]]] = {}
    root = replica / "ltx"
    if not root.is_dir():
        return out
    for level in os.listdir(root):
        files: dict[str, tuple[int, float]] = {}
        for entry in os.scandir(root / level):
            if entry.name.endswith(".ltx") and len(entry.name) == 37:
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                files[entry.name] = (st.st_size, st.st_mtime)
        out[int(level)] = files
    return out


def _txids(name: str) -> tuple[int, int]:
    return int(name[:16], 16), int(name[17:33], 16)


class Writer(threading.Thread):
    """The application: one row per transaction, every COMMIT_PAUSE, logging (batch, before, after)."""

    def __init__(self, db: Path, until: float) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.until = until
        self.log: list[tuple[int, float, float]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = sqlite3.connect(self.db, timeout=30, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 30000")
            k = 0
            while time.time() < self.until:
                k += 1
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO t (batch, v) VALUES (?, ?)", (k, os.urandom(200).hex()))
                if k % 7 == 0:  # rewrite old pages too, not only append
                    conn.execute("UPDATE t SET v = ? WHERE id = ?", (os.urandom(200).hex(), k // 2))
                before = time.time()
                conn.execute("COMMIT")
                self.log.append((k, before, time.time()))
                time.sleep(COMMIT_PAUSE)
            conn.close()
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def _max_batch(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COALESCE(MAX(batch), 0) FROM t").fetchone()[0]
    finally:
        conn.close()


@pytest.mark.timeout(300)
def test_lifecycle_levels_snapshots_retention_and_pitr(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    replica = tmp_path / "replica"
    url = file_url(replica)
    create_db(db)
    conf = tmp_path / "litestream.yml"
    conf.write_text(CONFIG.format(db=db, url=url))

    seen: dict[int, dict[str, tuple[int, float]]] = {}  # every file ever observed
    peak: dict[int, int] = {}  # most files observed at once per level
    with Agent.lifeboat("-config", str(conf), log=tmp_path / "agent.log") as agent:
        wait_replica_started(agent, replica)
        started = time.time()
        writer = Writer(db, started + WORKLOAD)
        writer.start()
        while writer.is_alive():
            assert agent.alive(), agent.output()
            for level, files in _scan(replica).items():
                seen.setdefault(level, {}).update(files)
                peak[level] = max(peak.get(level, 0), len(files))
            time.sleep(0.25)
        writer.join()
        assert writer.error is None, writer.error
        # Let the last commit reach the replica and one more L1 boundary pass.
        time.sleep(LEVELS[0] + SLACK)
        final = _scan(replica)
        final_at = time.time()
        for level, files in final.items():
            seen.setdefault(level, {}).update(files)
            peak[level] = max(peak.get(level, 0), len(files))
        assert agent.stop() == 0, agent.output()
    out = agent.output()
    assert "Traceback" not in out and "failed" not in out, out
    commits = writer.log
    assert len(commits) > WORKLOAD / (COMMIT_PAUSE + 0.1)

    # ---- 1. every level and L9 hold files; old files were deleted by the rules -----------------
    for level in (0, 1, 2, 3, 9):
        assert final.get(level), f"level {level} is empty: {sorted(final)}"
    deleted = {lvl: set(seen[lvl]) - set(final.get(lvl, {})) for lvl in seen}
    assert deleted[0], "L0 retention deleted nothing"
    assert deleted[9], "snapshot retention deleted nothing"
    assert deleted[1], "no L1 file was deleted below the retained snapshot"
    assert "0000000000000001-0000000000000001.ltx" not in final[0]
    # L9: what is left is the newest snapshot older than the window plus the ones inside it.
    snaps = sorted(final[9].items(), key=lambda kv: kv[1][1])
    last_retention = final_at - (final_at % SNAPSHOT_INTERVAL)  # retention ran at the last 15 s tick
    old = [n for n, (_, mt) in snaps if mt < last_retention - RETENTION]
    assert len(old) <= 1, f"more than one snapshot older than the window kept: {old}"
    floor = _txids(snaps[0][0])[1]
    for name in deleted[9]:
        assert seen[9][name][1] < last_retention - RETENTION + SLACK, f"snapshot {name} deleted inside the window"
    # L1..L3: deleted files lie wholly below the oldest kept snapshot; the level's last file stays.
    for level in (1, 2, 3):
        for name in deleted.get(level, ()):
            assert _txids(name)[1] <= floor, f"L{level} {name} deleted above the floor {floor}"
        kept = sorted(final[level])
        survivors_below = [n for n in kept[:-1] if _txids(n)[1] < floor]
        # Files below the floor written after the last retention round may remain; none older.
        for n in survivors_below:
            assert final[level][n][1] > last_retention - SLACK - LEVELS[level - 1] - RETENTION
    # L0: deleted files were covered by L1; what remains and L1 covers is recent.
    l1_max = max(_txids(n)[1] for n in final[1])
    for name, (_, mtime) in final[0].items():
        if _txids(name)[1] <= l1_max and name != max(final[0]):
            assert final_at - mtime < L0_RETENTION + L0_CHECK + LEVELS[0] + SLACK, (
                f"L0 {name} is {final_at - mtime:.1f}s old and covered by L1"
            )

    # ---- 4. object counts and bytes bounded by the config ------------------------------------
    rate = len(commits) / (commits[-1][2] - commits[0][1])  # commits per second (>= L0 files/s)
    bounds = {
        # an L0 file lives until L1 covers it and it is older than l0-retention, checked every interval
        0: rate * (L0_RETENTION + L0_CHECK + LEVELS[0] + SLACK) + 2,
        # compacted files reach back to the oldest kept snapshot: at most retention + one snapshot
        # interval at a retention round, plus one more interval until the next round
        1: (RETENTION + 2 * SNAPSHOT_INTERVAL) / LEVELS[0] + 2,
        2: (RETENTION + 2 * SNAPSHOT_INTERVAL) / LEVELS[1] + 2,
        3: (RETENTION + 2 * SNAPSHOT_INTERVAL) / LEVELS[2] + 2,
        # snapshots inside the window, the base snapshot just before it, the start-up snapshot
        # (not on a boundary), and a new one written just before its retention round runs
        9: RETENTION / SNAPSHOT_INTERVAL + 3,
    }
    for level, bound in bounds.items():
        assert peak[level] <= bound, f"L{level}: {peak[level]} files at once, bound {bound:.1f}"
    total_written = sum(len(f) for f in seen.values())
    assert sum(len(f) for f in final.values()) < total_written / 2  # retention really bounds the count
    db_bytes = os.path.getsize(db) + os.path.getsize(f"{db}-wal") if Path(f"{db}-wal").exists() else os.path.getsize(db)
    l9_bytes = sum(s for s, _ in final[9].values())
    assert l9_bytes <= bounds[9] * (db_bytes + 4096)
    total_bytes = sum(s for files in final.values() for s, _ in files.values())
    assert total_bytes <= sum(bounds.values()) * (db_bytes + 4096)
    print(
        f"\nlifecycle: {len(commits)} commits in {WORKLOAD:.0f}s; files written {total_written}, "
        f"kept {sum(len(f) for f in final.values())} ({total_bytes} bytes); "
        f"peak per level {dict(sorted(peak.items()))}; bounds { ({k: round(v, 1) for k, v in bounds.items()}) }"
    )

    # ---- 1. the final replica restores to the source with both tools ------------------------
    for tool, name in ((lifeboat, "lifeboat.db"), (litestream, "litestream.db")):
        ok(tool("restore", "-o", str(tmp_path / name), url))
        assert_same_db(tmp_path / name, db)
    assert rows(tmp_path / "lifeboat.db", "t")[-1][1] == commits[-1][0]

    # ---- 2. point in time, ten timestamps in the retention window ----------------------------
    now = time.time()
    last_commit = commits[-1][2]
    lo, hi = now - RETENTION + 1.0, last_commit - 0.5
    assert hi - lo > 15, "the window must overlap the workload"
    answers: list[tuple[str, Any]] = []
    for i in range(10):
        t = lo + (hi - lo) * i / 9
        ts = rfc3339_ms(datetime.fromtimestamp(t, UTC))
        t = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()  # what the CLI sees
        out_db = tmp_path / f"pitr-{i}.db"
        ok(lifeboat("restore", "-timestamp", ts, "-o", str(out_db), url))
        assert integrity(out_db) == "ok"
        k = _max_batch(out_db)
        assert k >= 1, f"{ts}: restored no rows"
        _, before, after = commits[k - 1]
        assert before <= t, f"{ts}: restored batch {k} committed at {after:.3f}, after T"
        assert after >= t - (LEVELS[0] + SLACK), f"{ts}: restored batch {k} committed {t - after:.2f}s before T"
        if k < len(commits):
            assert commits[k][1] > t - (LEVELS[0] + SLACK)  # the next commit was not long before T
        # every row is exactly the source's rows up to batch k (older updates included)
        assert [r[1] for r in rows(out_db)] == list(range(1, k + 1))
        if i % 3 == 0:  # Litestream's answer, recorded only (it deletes what our retention keeps)
            ls = litestream("restore", "-timestamp", ts, "-o", str(tmp_path / f"ls-pitr-{i}.db"), url)
            answers.append((ts, ls.returncode == 0 and _max_batch(tmp_path / f"ls-pitr-{i}.db")))
    print(f"litestream -timestamp answers (batch or False): {answers}")

    # ---- 2. a time older than anything retained: one clear line, non-zero exit ---------------
    oldest = min(mt for files in final.values() for _, mt in files.values())
    for t in (started + 1.0, oldest - 2.0):
        ts = rfc3339_ms(datetime.fromtimestamp(min(t, oldest - 2.0), UTC))
        proc = lifeboat("restore", "-timestamp", ts, "-o", str(tmp_path / "too-old.db"), url)
        assert proc.returncode == 1, proc
        no_traceback(proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "no matching backup files available" in proc.stderr or "no snapshot" in proc.stderr, proc.stderr
        assert not (tmp_path / "too-old.db").exists()


def _large_db_module() -> Any:
    path = Path(__file__).resolve().parents[2] / "bench" / "large_db.py"
    spec = importlib.util.spec_from_file_location("large_db", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(900)
def test_large_database_crossing_the_lock_page(tmp_path: Path) -> None:
    """> 1 GiB with 4096-byte pages: replicate, compact L1..L3, snapshot, restore byte-identical
    (the lock page aside) with both tools; the agent's peak RSS stays under 200 MB."""
    mod = _large_db_module()
    result = mod.run(tmp_path, size_mib=1100)
    print(f"\nlarge db: {result}")
    assert result["pages"] > result["lock_page"]
    assert result["levels"] >= {0, 1, 2, 3, 9}
    assert result["restored"] == {"lifeboat": "identical", "litestream": "identical"}
    assert result["agent_vmhwm_mb"] < 200
