# ruff: noqa: RUF001  (the report uses the multiplication sign)
"""Scale benchmarks: one agent carrying many databases, and the operator carrying many pods.

    python -P bench/scale.py --databases 1000 --pods 0                 # agent scenario, full
    python -P bench/scale.py --databases 50 --idle 5 --writes 5 --pods 0   # a quick smoke
    python -P bench/scale.py --databases 0 --pods 200                  # operator scenario only

Agent scenario, for each replica (a directory and moto S3 on 127.0.0.1:18001, `.ci/services.sh`)
and each tool (Lifeboat, `litestream` 0.5.17) on identical copies of one tree: `--databases` small
databases in ten subdirectories of one `dir:` entry (recursive, watch), the agent started under a
soft open-file limit of 1,024 (a container's default). Measured:

* time from start until every database has its first L0 file (its snapshot) in the replica;
* over `--idle` seconds with no writes: CPU seconds per minute (utime+stime from /proc), RSS;
* lag (commit to durable in the replica, as bench/run.py measures it: a marker per commit, an
  inotify watch on each L0 directory or a recording proxy in front of moto) of `--busy` databases
  written at 5 commits/s each for `--writes` seconds, against the same agent carrying one database;
* fairness: the same, while one more database takes `--hot-rate` commits/s;
* peak RSS (VmHWM), open descriptors and threads; `litestream restore` of `--restores` databases
  compared row for row with the source after the agent stopped.

The operator scenario (`--pods` > 0) is bench/scale_operator.py's. Results go to
bench/results/scale.json (keys "agent" and "operator"; a run of one keeps the other) and scale.md.
Not run in CI; no test asserts any of these numbers (tests/e2e/test_scale_smoke.py checks only that
the scenario replicates every database correctly).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (
    LIFEBOAT,
    LITESTREAM,
    TOOLS,
    DirWatch,
    RecordingProxy,
    connect,
    cpu_seconds,
    create_db,
    lag_stats,
    log,
    steady_writer,
    tool_env,
)

RESULTS = Path(__file__).resolve().parent / "results"
SOFT_LIMIT = 1024
SUBDIRS = 10
RATE = 5.0  # commits/s of each busy database
S3_PORT = 18001  # moto of .ci/services.sh
BUCKET = "scale"
REPLICAS = ("file", "s3")
S3_L0 = "/0000/"  # the L0 directory of a database in an object store (a directory replica: ltx/0/)


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


def rows(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT * FROM t ORDER BY id").fetchall()
    finally:
        conn.close()


def cpu_per_minute(pid: int, seconds: float) -> float:
    """CPU seconds the process used per minute of wall time over `seconds`."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 60


# ---- replicas -----------------------------------------------------------------------------------


class FileTarget:
    """A directory replica: first snapshots and L0 arrival times read from the tree."""

    kind = "file"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._watches: dict[str, DirWatch] = {}
        self._before: dict[str, set[str]] = {}

    def url(self, rel: str = "") -> str:
        return f"file://{self.root / rel}" if rel else f"file://{self.root}"

    def replicated(self, rels: set[str]) -> set[str]:
        """Those of `rels` with at least one L0 file."""
        out = set()
        for rel in rels:
            l0 = self.root / rel / "ltx" / "0"
            try:
                if any(name.endswith(".ltx") for name in os.listdir(l0)):
                    out.add(rel)
            except FileNotFoundError:
                pass
        return out

    def start_timing(self, rels: list[str]) -> None:
        self._before = {rel: set(os.listdir(self.root / rel / "ltx" / "0")) for rel in rels}
        self._watches = {rel: DirWatch(self.root / rel / "ltx" / "0") for rel in rels}

    def l0_files(self) -> dict[str, list[tuple[float, bytes]]]:
        """Per database watched since `start_timing`: (arrival, content) of each new L0 file."""
        out = {}
        for rel, watch in self._watches.items():
            l0 = self.root / rel / "ltx" / "0"
            files = []
            for name, when in watch.stop().items():
                if name in self._before[rel]:
                    continue  # written before the phase
                try:
                    files.append((when, (l0 / name).read_bytes()))
                except FileNotFoundError:
                    pass  # compacted away meanwhile: its commits are in a later file or unmapped
            out[rel] = files
        self._watches = {}
        return out


class S3Target:
    """A prefix of the shared moto, behind a recording proxy (PUT acknowledgement times)."""

    kind = "s3"

    def __init__(self, prefix: str) -> None:
        import boto3

        self.prefix = prefix
        self.s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{S3_PORT}", region_name="us-east-1",
                               aws_access_key_id="bench", aws_secret_access_key="bench")
        try:
            self.s3.create_bucket(Bucket=BUCKET)
        except self.s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        self.proxy = RecordingProxy(S3_PORT)
        self._since = 0

    def url(self, rel: str = "", direct: bool = False) -> str:
        port = S3_PORT if direct else self.proxy.port
        path = f"{self.prefix}/{rel}" if rel else self.prefix
        return f"s3://{BUCKET}/{path}?endpoint=http://127.0.0.1:{port}&forcePathStyle=true&region=us-east-1"

    def _keys(self, prefix: str) -> Iterator[str]:
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"]

    def replicated(self, rels: set[str]) -> set[str]:
        out = set()
        for key in self._keys(self.prefix + "/"):
            head, sep, _ = key[len(self.prefix) + 1 :].partition(S3_L0)
            if sep and key.endswith(".ltx"):
                out.add(head)
        return out & rels

    def start_timing(self, rels: list[str]) -> None:
        self._rels = rels
        self._since = len(self.proxy.log)

    def l0_files(self) -> dict[str, list[tuple[float, bytes]]]:
        out: dict[str, list[tuple[float, bytes]]] = {rel: [] for rel in self._rels}
        for method, path, when, status in self.proxy.log[self._since :]:
            key = path.split("?", 1)[0].lstrip("/").removeprefix(BUCKET + "/")
            head, sep, _ = key[len(self.prefix) + 1 :].partition(S3_L0)
            if method == "PUT" and status < 300 and sep and head in out and key.endswith(".ltx"):
                try:
                    body = self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                except self.s3.exceptions.NoSuchKey:
                    continue
                out[head].append((when, body))
        return out

    def close(self) -> None:
        self.proxy.stop()


# ---- the agent under test -----------------------------------------------------------------------


@dataclass
class Agent:
    tool: str
    proc: subprocess.Popen[bytes]
    logfile: Path

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.tool} exited {self.proc.returncode}: {self.logfile.read_text()[-2000:]}")

    def errors(self) -> list[str]:
        """Error lines of the agent's log (both tools write `level=ERROR`)."""
        return [line for line in self.logfile.read_text().splitlines() if "level=ERROR" in line or " ERROR " in line]


@contextmanager
def agent(tool: str, data: Path, target: FileTarget | S3Target, work: Path, soft_limit: int) -> Iterator[Agent]:
    """`replicate` of `tool` on a `dir:` entry (recursive, watch) for `data`, stopped at the end."""
    cfg = work / f"{tool}.yml"
    cfg.write_text(
        f"dbs:\n  - dir: {data}\n    pattern: '*.db'\n    recursive: true\n    watch: true\n"
        f"    replica:\n      url: {target.url()}\n"
    )
    exe = LIFEBOAT if tool == "lifeboat" else LITESTREAM
    logfile = work / f"{tool}.log"
    # The shell lowers the soft limit only, as a container runtime does, then becomes the agent.
    cmd = ["sh", "-c", f'ulimit -Sn {soft_limit} && exec "$@"', "sh", exe, "replicate", "-config", str(cfg)]
    with logfile.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=tool_env(tool))
    try:
        yield Agent(tool, proc, logfile)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_replicated(a: Agent, target: FileTarget | S3Target, rels: list[str], timeout: float) -> float:
    """Seconds from now until every database of `rels` has its first L0 file in the replica."""
    started = time.monotonic()
    pending = set(rels)
    while pending:
        a.check()
        pending -= target.replicated(pending)
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{a.tool}: {len(pending)} databases not replicated after {timeout}s")
        time.sleep(0.2)
    return time.monotonic() - started


def hot_writer(path: str, rate: float, seconds: float) -> None:
    """The hot tenant: `rate` commits/s (its own process, so the harness's writers keep their pace)."""
    commits = steady_writer(Path(path), rate, seconds)
    print(f"hot writer: {len(commits)} commits in {seconds} s", file=sys.stderr)


def write_phase(a: Agent, target: FileTarget | S3Target, data: Path, busy: list[str], seconds: float,
                hot: str | None = None, hot_rate: float = 0.0) -> dict[str, Any]:
    """`RATE` commits/s to each of `busy` (and `hot_rate` to `hot`) for `seconds`; lag per database."""
    import threading

    target.start_timing(busy)
    commits: dict[str, dict[int, float]] = {}
    threads = [threading.Thread(target=lambda r=rel: commits.__setitem__(r, steady_writer(data / r, RATE, seconds)))
               for rel in busy]
    proc = None
    if hot is not None:
        spawn = multiprocessing.get_context("spawn")
        proc = spawn.Process(target=hot_writer, args=(str(data / hot), hot_rate, seconds))
        proc.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if proc is not None:
        proc.join()
    a.check()
    time.sleep(5)  # the last commits reach the replica (object stores: one sync-interval at most)
    files = target.l0_files()
    per_db = {rel: lag_stats(commits[rel], files[rel]) for rel in busy}
    return {
        "p99_by_db": {rel: round(s["p99"], 3) for rel, s in per_db.items()},
        "p99_worst_db": round(max(s["p99"] for s in per_db.values()), 3),
        "p99_median_db": round(sorted(s["p99"] for s in per_db.values())[len(per_db) // 2], 3),
        "unmapped": sum(s["unmapped"] for s in per_db.values()),
        "commits": sum(s["commits"] for s in per_db.values()),
    }


def restore_check(tool: str, target: FileTarget | S3Target, data: Path, rels: list[str], work: Path) -> None:
    """`litestream restore` of each of `rels` equals the source, row for row."""
    for rel in rels:
        out = work / "restored" / tool / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        url = target.url(rel, direct=True) if isinstance(target, S3Target) else target.url(rel)
        subprocess.run([LITESTREAM, "restore", "-o", str(out), url], check=True, capture_output=True,
                       env=tool_env("litestream"))
        if rows(out) != rows(data / rel):
            raise RuntimeError(f"{tool}: litestream restore of {rel} differs from the source")


def new_target(kind: str, work: Path, tool: str) -> FileTarget | S3Target:
    if kind == "file":
        return FileTarget(work / "replica")
    return S3Target(f"{work.name}-{tool}-{int(time.time())}")


def single_lag(tool: str, kind: str, template: Path, rel: str, work: Path, args: argparse.Namespace) -> float:
    """Lag p99 of one database at `RATE` commits/s, the agent carrying it alone."""
    work.mkdir(parents=True)
    data = work / "data"
    (data / rel).parent.mkdir(parents=True)
    shutil.copy(template / rel, data / rel)
    target = new_target(kind, work, tool)
    try:
        with agent(tool, data, target, work, args.soft_limit) as a:
            wait_replicated(a, target, [rel], args.timeout)
            return write_phase(a, target, data, [rel], args.writes)["p99_worst_db"]
    finally:
        if isinstance(target, S3Target):
            target.close()


def run_tool(tool: str, kind: str, template: Path, work: Path, rels: list[str],
             args: argparse.Namespace) -> dict[str, Any]:
    """Every agent-scenario figure of one tool against one replica kind."""
    work.mkdir(parents=True)
    data = work / "data"
    shutil.copytree(template, data)
    # The hot phase writes other databases than the first phase: commit markers restart at 0 in
    # each phase, and a page holding an earlier phase's marker would time a commit too early.
    picked = random.Random(1).sample(rels, min(2 * args.busy + 1, len(rels)))
    busy, fair_busy, hot = picked[: args.busy], picked[args.busy : 2 * args.busy], picked[-1]
    out: dict[str, Any] = {"tool": tool}
    target = new_target(kind, work, tool)
    try:
        with agent(tool, data, target, work, args.soft_limit) as a:
            out["all_replicated_s"] = round(wait_replicated(a, target, rels, args.timeout), 1)
            out["startup_cpu_s"] = round(cpu_seconds(a.proc.pid), 1)
            if isinstance(target, S3Target):
                out["startup_requests"] = len(target.proxy.log)
            log(f"{tool}/{kind}: all {len(rels)} replicated after {out['all_replicated_s']} s")
            time.sleep(5)  # the last first syncs and compactions
            out["idle_cpu_s_per_min"] = round(cpu_per_minute(a.proc.pid, args.idle), 2)
            out["idle_rss_mb"] = round(status_field(a.proc.pid, "VmRSS") / 1024, 1)
            if args.writes > 0:
                out["lag"] = write_phase(a, target, data, busy, args.writes)
                out["fair"] = write_phase(a, target, data, fair_busy, args.writes, hot, args.hot_rate)
            out["open_fds"] = open_fds(a.proc.pid)
            out["threads"] = status_field(a.proc.pid, "Threads")
            out["peak_rss_mb"] = round(status_field(a.proc.pid, "VmHWM") / 1024, 1)
            out["peak_rss_kb_per_db"] = round(status_field(a.proc.pid, "VmHWM") / len(rels), 1)
            log(f"{tool}/{kind}: {out}")
        out["errors"] = a.errors()[:20]
        check = rels if args.restores < 0 else [*busy[: args.restores], *fair_busy[: args.restores], hot]
        restore_check(tool, target, data, check, work)
        out["restored_ok"] = len(check)
    finally:
        if isinstance(target, S3Target):
            target.close()
    if args.writes > 0:
        out["single_db_lag_p99"] = round(single_lag(tool, kind, template, busy[0], work / "single", args), 3)
    return out


def agent_scenario(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The agent scenario, every replica kind and tool; the result `markdown_agent` reports."""
    template = tmp / "template"
    log(f"creating {args.databases} databases")
    rels = build(template, args.databases)
    runs: dict[str, dict[str, Any]] = {}
    when: dict[str, dict[str, Any]] = {}
    for kind in args.replicas.split(","):
        runs[kind] = {}
        when[kind] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "loadavg_start": os.getloadavg()}
        for tool in args.tools.split(","):
            runs[kind][tool] = run_tool(tool, kind, template, tmp / kind / tool, rels, args)
        when[kind]["loadavg_end"] = os.getloadavg()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), Linux {platform.release()}",
        "hard_limit": "unlimited" if hard == resource.RLIM_INFINITY else hard,
        "params": {k: v for k, v in vars(args).items() if k in AGENT_PARAMS},
        "when": when,
        "runs": runs,
    }


AGENT_PARAMS = ("databases", "idle", "writes", "busy", "hot_rate", "restores", "soft_limit", "replicas", "tools")


# ---- report -------------------------------------------------------------------------------------


def _get(run: dict[str, Any], key: str) -> Any:
    cur: Any = run
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


Check = Callable[[dict[str, Any], dict[str, Any]], str]


def _ratio(key: str, limit: float) -> Check:
    def check(lb: dict[str, Any], ls: dict[str, Any]) -> str:
        a, b = _get(lb, key), _get(ls, key)
        if not a or not b:
            return ""
        r = a / b
        return f"{r:.2f}× ({'ok' if r <= limit else 'MISS'}, target ≤ {limit}×)"
    return check


def _vs(key: str, base: str, limit: float, what: str) -> Check:
    def check(lb: dict[str, Any], _ls: dict[str, Any]) -> str:
        a, b = _get(lb, key), _get(lb, base)
        if a is None or not b:
            return ""
        r = a / b
        return f"{r:.2f}× {what} ({'ok' if r <= limit else 'MISS'}, target ≤ {limit}×)"
    return check


ROWS: list[tuple[str, str, Check | None]] = [
    ("all_replicated_s", "time until every database has its first snapshot (s)", _ratio("all_replicated_s", 1.0)),
    ("startup_cpu_s", "agent CPU until then (s)", None),
    ("startup_requests", "requests to the replica until then (S3)", None),
    ("idle_cpu_s_per_min", "CPU idle (s per minute)", _ratio("idle_cpu_s_per_min", 0.5)),
    ("idle_rss_mb", "RSS idle (MB)", None),
    ("peak_rss_mb", "peak RSS (MB)", _ratio("peak_rss_mb", 1.0)),
    ("peak_rss_kb_per_db", "peak RSS per database (kB)", _ratio("peak_rss_kb_per_db", 1.0)),
    ("single_db_lag_p99", "lag p99, the agent carrying one database (s)", None),
    ("lag.p99_worst_db", "lag p99 of the worst busy database (s)",
     _vs("lag.p99_worst_db", "single_db_lag_p99", 1.0, "one database's")),
    ("lag.p99_median_db", "lag p99, median over busy databases (s)",
     _vs("lag.p99_median_db", "single_db_lag_p99", 1.0, "one database's")),
    ("fair.p99_worst_db", "with a hot tenant: lag p99 of the worst busy database (s)",
     _vs("fair.p99_worst_db", "lag.p99_worst_db", 2.0, "unloaded")),
    ("fair.p99_median_db", "with a hot tenant: lag p99, median over busy databases (s)",
     _vs("fair.p99_median_db", "lag.p99_median_db", 2.0, "unloaded")),
    ("lag.unmapped", "commits never found in the replica (busy phase)", None),
    ("fair.unmapped", "commits never found in the replica (hot phase)", None),
    ("open_fds", "open file descriptors", None),
    ("threads", "threads", None),
    ("restored_ok", "databases restored by `litestream restore`, equal to the source", None),
]


def markdown_agent(res: dict[str, Any]) -> str:
    a = res["params"]
    lines = [
        "## One agent, many databases",
        "",
        f"{a['databases']} databases in {SUBDIRS} subdirectories (`dir:` recursive, watch), soft "
        f"open-file limit {a['soft_limit']} (hard: {res['hard_limit']}), {a['idle']} s idle, write phases of "
        f"{a['writes']} s: {a['busy']} databases at {RATE:g} commits/s each, then the same with one more database at "
        f"{a['hot_rate']:g} commits/s. Machine: {res['machine']}. Produced by `python -P bench/scale.py`.",
    ]
    for kind, by_tool in res["runs"].items():
        tools = list(by_tool)
        lb, ls = by_tool.get("lifeboat", {}), by_tool.get("litestream", {})
        w = res["when"][kind]
        load = " → ".join(" ".join(f"{x:.2f}" for x in w[k]) for k in ("loadavg_start", "loadavg_end"))
        lines += ["", f"### {kind} replica", "", f"{w['date']}; load average (1, 5, 15 min) {load}.", "",
                  "| | " + " | ".join(tools) + " | |",
                  "|---|" + "---|" * (len(tools) + 1)]
        for key, label, check in ROWS:
            verdict = check(lb, ls) if check is not None and lb else ""
            cells = " | ".join(str(_get(by_tool[t], key)) for t in tools)
            lines.append(f"| {label} | {cells} | {verdict} |")
        for tool in tools:
            errors = by_tool[tool].get("errors") or []
            first = f", first: `{errors[0]}`" if errors else ""
            lines.append(f"\n{tool}: {len(errors)} error lines in the log{first}")
    return "\n".join(lines) + "\n"


def write_results(
    out: Path, scenario: str, result: dict[str, Any], operator_markdown: Callable[[dict[str, Any]], str] | None
) -> None:
    """Replace one scenario's key of scale.json (the other is kept) and write scale.md from both."""
    path = out / "scale.json"
    both = json.loads(path.read_text()) if path.exists() else {}
    old = both.get(scenario) or {}
    if scenario == "agent" and old and old["params"] == result["params"] | {"replicas": old["params"]["replicas"]}:
        # A run of some replica kinds keeps the others' figures (same parameters otherwise).
        result["runs"] = old.get("runs", {}) | result["runs"]
        result["when"] = old.get("when", {}) | result["when"]
    both[scenario] = result
    path.write_text(json.dumps(both, indent=2) + "\n")
    md = ["# Scale", ""]
    if both.get("agent"):
        md.append(markdown_agent(both["agent"]))
    if both.get("operator") and operator_markdown is not None:
        md.append(operator_markdown(both["operator"]))
    (out / "scale.md").write_text("\n".join(md))


def operator_module() -> Any:
    """bench/scale_operator.py, or None (said in one line) when it is absent."""
    try:
        import scale_operator
    except ModuleNotFoundError as exc:
        if exc.name != "scale_operator":
            raise
        log("operator scenario skipped: bench/scale_operator.py is absent")
        return None
    return scale_operator


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--databases", type=int, default=1000, help="agent scenario (0: skip it)")
    p.add_argument("--pods", type=int, default=0, help="operator scenario (0: skip it)")
    p.add_argument("--replicas", default=",".join(REPLICAS), help="agent scenario replica kinds: file,s3")
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--idle", type=float, default=300.0, help="seconds of the idle CPU measurement")
    p.add_argument("--writes", type=float, default=60.0, help="seconds of each write phase (0: none)")
    p.add_argument("--busy", type=int, default=20, help="databases written during the write phases")
    p.add_argument("--hot-rate", type=float, default=2000.0, help="commits/s of the hot tenant")
    p.add_argument("--restores", type=int, default=10, help="busy databases restored (-1: every database)")
    p.add_argument("--soft-limit", type=int, default=SOFT_LIMIT)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the first replication")
    p.add_argument("--operator-replicas", type=int, default=2, help="operator scenario: operator replicas")
    p.add_argument("--namespaces", type=int, default=10, help="operator scenario: namespaces")
    p.add_argument("--curve", default="", help="operator scenario: pod counts to measure along the way")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.databases > 0:
        with tempfile.TemporaryDirectory(prefix="lifeboat-scale-") as tmp:
            result = agent_scenario(args, Path(tmp))
        op = operator_module()
        write_results(args.out, "agent", result, op.markdown if op else None)
        print(markdown_agent(result))
    if args.pods > 0:
        op = operator_module()
        if op is not None:
            curve = [int(x) for x in args.curve.split(",") if x]
            result = op.run(pods=args.pods, replicas=args.operator_replicas, namespaces=args.namespaces, curve=curve)
            write_results(args.out, "operator", result, op.markdown)
            print(op.markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
