"""Damaged replicas: flip bits in, truncate or delete replica files, then `lifeboat restore`.

The verdict for each case: the restore either succeeds with a correct database, or exits non-zero
with one line naming the damaged file and leaves nothing behind (no output, no `.tmp`, no work dir).
"Correct" is the source database for bit flips and truncations (a damaged file the plan does not use
is harmless), and for a deleted file either the source or exactly the state the undamaged replica
restores at the TXID the restore reports (deleting the newest files of a replica rewinds it; that is
detectable by nobody and is not a wrong database).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LIFEBOAT = [sys.executable, "-m", "lifeboat.agent.cli"]


def db_digest(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        check = conn.execute("PRAGMA integrity_check").fetchall()
        if check != [("ok",)]:
            return f"integrity:{check[:2]}"
        h = hashlib.sha256()
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE '_litestream%'"
        ):
            for row in conn.execute(f'SELECT * FROM "{name}" ORDER BY 1'):
                h.update(repr(row).encode())
        return h.hexdigest()
    finally:
        conn.close()


def build_replica(root: Path) -> tuple[Path, str]:
    """A replica with L0, L1, L2 and L9 files; returns it and the source's digest."""
    root.mkdir(parents=True, exist_ok=True)
    db = root / "src.db"
    replica = root / "pristine"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA page_size = 1024")
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    cfg = root / "litestream.yml"
    cfg.write_text(
        f"levels:\n  - interval: 1s\n  - interval: 2s\nsnapshot:\n  interval: 3s\n  retention: 1h\n"
        f"l0-retention: 1h\ndbs:\n  - path: {db}\n    monitor-interval: 50ms\n"
        f"    min-checkpoint-page-count: 20\n    replica:\n      url: file://{replica}\n"
    )
    log = open(root / "agent.log", "wb")
    agent = subprocess.Popen([*LIFEBOAT, "replicate", "-config", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    try:
        i = 0
        deadline = time.monotonic() + 7
        while time.monotonic() < deadline:
            conn.execute("BEGIN")
            for _ in range(5):
                i += 1
                conn.execute("INSERT INTO t VALUES (?, ?)", (i, os.urandom(40).hex()))
            if i % 50 == 0:
                conn.execute("UPDATE t SET v = v || 'x' WHERE id % 7 = 0")
            conn.execute("COMMIT")
            time.sleep(0.05)
    finally:
        agent.terminate()
        agent.wait(60)
        log.close()
    conn.close()
    levels = {p.parent.name for p in replica.glob("ltx/*/*.ltx")}
    assert {"0", "1", "9"} <= levels, f"replica lacks levels: {sorted(levels)}"
    return replica, db_digest(db)


def _plan(replica: Path) -> list[Path]:
    proc = subprocess.run(
        [*LIFEBOAT, "restore", "-dry-run", "-json", "-o", str(replica.parent / "plan.db"), f"file://{replica}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [replica / "ltx" / str(e["level"]) / e["name"] for e in json.loads(proc.stdout)]


def damage(victim: Path, kind: str, rng: random.Random) -> str:
    data = bytearray(victim.read_bytes())
    if kind == "bitflip":
        flips = []
        for _ in range(rng.randint(1, 3)):
            off = rng.randrange(len(data))
            bit = 1 << rng.randrange(8)
            data[off] ^= bit
            flips.append(f"{off}^{bit}")
        victim.write_bytes(bytes(data))
        return f"bitflip {','.join(flips)}"
    if kind == "truncate":
        n = rng.randrange(len(data))
        victim.write_bytes(bytes(data[:n]))
        return f"truncate to {n}"
    victim.unlink()
    return "delete"


def run_corruptions(root: Path, cases: int, seed: int | None = None, workers: int = 2) -> dict[str, object]:
    rng = random.Random(seed)
    pristine, want = build_replica(root / "source")
    planned = _plan(pristine)
    every = sorted(pristine.glob("ltx/*/*.ltx"))
    specs = []
    for i in range(cases):
        kind = rng.choice(["bitflip", "bitflip", "truncate", "delete"])
        pool = planned if rng.random() < 0.6 else every
        specs.append((i, kind, rng.choice(pool).relative_to(pristine), rng.randrange(1 << 30)))
    results = {"cases": 0, "restored_correct": 0, "failed_naming_file": 0, "wrong": 0, "failures": []}
    earlier: dict[int, str] = {}

    def one(spec: tuple[int, str, Path, int]) -> tuple[str, str]:
        i, kind, rel, s = spec
        case = root / f"case{i}"
        shutil.rmtree(case, ignore_errors=True)
        rep = case / "replica"
        shutil.copytree(pristine, rep)
        what = damage(rep / rel, kind, random.Random(s))
        out_dir = case / "out"
        out_dir.mkdir()
        out = out_dir / "restored.db"
        proc = subprocess.run(
            [*LIFEBOAT, "restore", "-json", "-o", str(out), f"file://{rep}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        tag = f"case {i}: {what} of {rel}"
        try:
            if proc.returncode == 0:
                got = db_digest(out)
                if got == want:
                    return "restored_correct", ""
                txid = int(json.loads(proc.stdout)["txid"], 16)
                if kind == "delete":
                    if txid not in earlier:
                        ref = case / "ref.db"
                        subprocess.run(
                            [*LIFEBOAT, "restore", "-txid", f"{txid:016x}", "-o", str(ref), f"file://{pristine}"],
                            capture_output=True,
                            timeout=120,
                            check=True,
                        )
                        earlier[txid] = db_digest(ref)
                    if got == earlier[txid]:
                        return "restored_correct", ""
                return "wrong", f"{tag}: restore succeeded with a WRONG database (txid {txid}): {got[:40]}"
            err = proc.stderr.strip()
            left = sorted(os.listdir(out_dir))
            problems = []
            if "Traceback" in proc.stderr or len(err.splitlines()) != 1:
                problems.append(f"not one clean line: {proc.stderr[-800:]!r}")
            if left:
                problems.append(f"left behind {left}")
            if proc.returncode != 1:
                problems.append(f"exit {proc.returncode}")
            named = rel.name in err if kind != "delete" else (".ltx" in err or "snapshot" in err)
            if not named:
                problems.append(f"error does not name {rel.name}: {err!r}")
            if problems:
                return "wrong", f"{tag}: " + "; ".join(problems)
            return "failed_naming_file", ""
        finally:
            shutil.rmtree(case, ignore_errors=True)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for verdict, msg in pool.map(one, specs):
            results["cases"] += 1  # type: ignore[operator]
            results[verdict] += 1  # type: ignore[operator]
            if msg:
                results["failures"].append(msg)  # type: ignore[attr-defined]
    return results
