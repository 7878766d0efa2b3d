"""One agent carrying many databases in directory mode (`dir:`): Lifeboat vs `litestream`, one
after the other on identical copies of the same workload.

    python bench/dir_scale.py                        # 1,000 databases, 60 s idle, 60 s of writes
    python bench/dir_scale.py --databases 200 --idle 20 --writes 20

For each tool: N small databases (one table, a few rows) in ten subdirectories of one directory, a
`dir:` entry (recursive, watch) with a file replica, and the agent started under a soft open-file
limit of 1,024 (a container's default) with the hard limit left as it is. Measured:

* time from start until every database has its first L0 file in the replica;
* over `--idle` seconds with no writes: CPU seconds per minute (utime+stime from /proc), RSS;
* over `--writes` seconds of one commit every 50 ms to a random database of a sample of
  `--sample`: CPU seconds per minute, RSS;
* open file descriptors and threads (/proc/<pid>/fd, /proc/<pid>/status) after the writes, and
  peak RSS (VmHWM);
* `litestream restore` of `--restores` databases of the sample, compared row for row with the
  source, after the agent stopped.

Writes bench/results/dir_scale.md (and .json). Not run in CI; no test asserts any of these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import LIFEBOAT, LITESTREAM, TOOLS, connect, cpu_seconds, create_db, log, tool_env

RESULTS = Path(__file__).resolve().parent / "results"
SOFT_LIMIT = 1024
SUBDIRS = 10
WRITE_EVERY = 0.05


def status_field(pid: int, name: str) -> int:
    """A kB or count field of /proc/<pid>/status (VmRSS, VmHWM, Threads)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def build(data: Path, n: int) -> list[str]:
    """N databases under `data`, spread over subdirectories; returns their relative paths."""
    rels = [f"d{i % SUBDIRS}/db{i:05d}.db" for i in range(n)]
    for i, rel in enumerate(rels):
        path = data / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        create_db(path)
        conn = connect(path)
        conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"seed-{i}-{j}",) for j in range(3)])
        conn.close()
    return rels


def first_replicated(replica: Path, rel: str) -> bool:
    l0 = replica / rel / "ltx" / "0"
    try:
        return any(name.endswith(".ltx") for name in (p.name for p in l0.iterdir()))
    except FileNotFoundError:
        return False


def rows(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT * FROM t ORDER BY id").fetchall()
    finally:
        conn.close()


def cpu_per_minute(pid: int, seconds: float, work: Any = None) -> float:
    """CPU seconds the process used per minute of wall time while `work()` runs for `seconds`
    (or while nothing happens)."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    while time.monotonic() - t0 < seconds:
        if work is not None:
            work()
        time.sleep(WRITE_EVERY)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 60


def run_tool(tool: str, template: Path, work: Path, rels: list[str], args: argparse.Namespace) -> dict[str, Any]:
    data, replica = work / "data", work / "replica"
    shutil.copytree(template, data)
    cfg = work / "litestream.yml"
    cfg.write_text(
        f"dbs:\n  - dir: {data}\n    pattern: '*.db'\n    recursive: true\n    watch: true\n"
        f"    replica:\n      url: file://{replica}\n"
    )
    exe = LIFEBOAT if tool == "lifeboat" else LITESTREAM
    logfile = (work / "agent.log").open("w")
    # The shell lowers the soft limit only, as a container runtime does, then becomes the agent.
    cmd = ["sh", "-c", f'ulimit -Sn {args.soft_limit} && exec "$@"', "sh", exe, "replicate", "-config", str(cfg)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, env=tool_env(tool))
    out: dict[str, Any] = {"tool": tool}
    try:
        pending = set(rels)
        while pending:
            if proc.poll() is not None:
                raise RuntimeError(f"{tool} exited {proc.returncode}: {(work / 'agent.log').read_text()[-2000:]}")
            pending = {rel for rel in pending if not first_replicated(replica, rel)}
            if time.monotonic() - started > args.timeout:
                raise RuntimeError(f"{tool}: {len(pending)} databases not replicated after {args.timeout}s")
            time.sleep(0.2)
        out["all_replicated_s"] = round(time.monotonic() - started, 1)
        log(f"{tool}: all {len(rels)} replicated after {out['all_replicated_s']} s")
        time.sleep(5)  # the last first syncs and compactions
        out["idle_cpu_s_per_min"] = round(cpu_per_minute(proc.pid, args.idle), 2)
        out["idle_rss_mb"] = round(status_field(proc.pid, "VmRSS") / 1024, 1)
        rng = random.Random(1)
        sample = rng.sample(rels, min(args.sample, len(rels)))
        conns = {rel: connect(data / rel) for rel in sample}
        commits = 0

        def write() -> None:
            nonlocal commits
            rel = rng.choice(sample)
            conns[rel].execute("INSERT INTO t (v) VALUES (?)", (f"w-{commits}",))
            commits += 1

        out["writes_cpu_s_per_min"] = round(cpu_per_minute(proc.pid, args.writes, write), 2)
        out["writes_rss_mb"] = round(status_field(proc.pid, "VmRSS") / 1024, 1)
        out["commits"] = commits
        for conn in conns.values():
            conn.close()
        out["open_fds"] = open_fds(proc.pid)
        out["threads"] = status_field(proc.pid, "Threads")
        out["peak_rss_mb"] = round(status_field(proc.pid, "VmHWM") / 1024, 1)
        time.sleep(5)  # the last writes reach the replica (both sync every second at most)
        log(f"{tool}: {out}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        logfile.close()
    agent_log = (work / "agent.log").read_text()
    out["emfile_errors"] = agent_log.count("Too many open files") + agent_log.count("out of file descriptors")
    restored = 0
    for rel in sample[: args.restores]:
        target = work / "restored" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([LITESTREAM, "restore", "-o", str(target), f"file://{replica / rel}"], check=True,
                       capture_output=True)
        if rows(target) != rows(data / rel):
            raise RuntimeError(f"{tool}: litestream restore of {rel} differs from the source")
        restored += 1
    out["restored_ok"] = f"{restored}/{min(args.restores, len(sample))}"
    return out


def markdown(res: dict[str, Any]) -> str:
    keys = [
        ("all_replicated_s", "time until all databases first replicated (s)"),
        ("idle_cpu_s_per_min", "CPU idle (s per minute)"),
        ("idle_rss_mb", "RSS idle (MB)"),
        ("writes_cpu_s_per_min", "CPU under the sample writes (s per minute)"),
        ("writes_rss_mb", "RSS under the sample writes (MB)"),
        ("peak_rss_mb", "peak RSS (MB)"),
        ("commits", "commits written during the write phase"),
        ("open_fds", "open file descriptors"),
        ("threads", "threads"),
        ("emfile_errors", "EMFILE errors in the log"),
        ("restored_ok", "`litestream restore` of sampled databases equal to the source"),
    ]
    a = res["params"]
    lines = [
        "# Directory mode at scale: one agent, many databases",
        "",
        f"{res['date']}, {a['databases']} databases in {SUBDIRS} subdirectories (`dir:` recursive, watch, file "
        f"replica), soft open-file limit {a['soft_limit']} (hard limit left as is: {res['hard_limit']}), "
        f"{a['idle']} s idle, {a['writes']} s of one commit every {int(WRITE_EVERY * 1000)} ms to a random one of "
        f"{a['sample']} databases. Machine: {res['machine']}. Produced by `python bench/dir_scale.py`.",
        "",
        "| | " + " | ".join(r["tool"] for r in res["runs"]) + " |",
        "|---|" + "---|" * len(res["runs"]),
    ]
    for key, label in keys:
        lines.append(f"| {label} | " + " | ".join(str(r.get(key, "n/a")) for r in res["runs"]) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--databases", type=int, default=1000)
    p.add_argument("--sample", type=int, default=100, help="databases the write phase writes to")
    p.add_argument("--restores", type=int, default=10, help="sampled databases restored with litestream")
    p.add_argument("--idle", type=float, default=60.0)
    p.add_argument("--writes", type=float, default=60.0)
    p.add_argument("--soft-limit", type=int, default=SOFT_LIMIT)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the first replication")
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--out", type=Path, default=RESULTS / "dir_scale.md")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="lifeboat-dirscale-") as tmp:
        template = Path(tmp) / "template"
        log(f"creating {args.databases} databases")
        rels = build(template, args.databases)
        runs = []
        for tool in args.tools.split(","):
            work = Path(tmp) / tool
            work.mkdir()
            runs.append(run_tool(tool, template, work, rels, args))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), Linux {platform.release()}",
        "hard_limit": "unlimited" if hard == resource.RLIM_INFINITY else hard,
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": runs,
    }
    args.out.write_text(markdown(res))
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
