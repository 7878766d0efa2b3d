# ruff: noqa: B023, B007, RUF001  (waits call their lambdas at once; the report uses the multiplication sign)
"""Lifeboat vs the real `litestream` 0.5.17, side by side, same machine, same workload, one run.

    python bench/run.py            # full run (about 30-35 minutes)
    python bench/run.py --quick    # smoke run (about 3 minutes)
    python bench/run.py --only lag_file,idle

Writes bench/results/latest.json and bench/results/latest.md (`--only follow` and `--only
restore_latency` write results/follow.* and results/restore_latency.* instead). Never run in CI;
tests never assert wall-clock times.

How each number is measured (the same way for both tools):

* Lag: the application (this process) commits rows carrying a unique marker `MRK<n>`, and notes
  the wall clock when COMMIT returns. For a file replica, an inotify watch on the replica's L0
  directory notes when each LTX file appears (both tools write a temp file and rename it, so the
  appearance is the moment it is durable and visible). For S3 (moto), the object's LastModified
  a recording reverse proxy between the agents and moto notes when each PUT was acknowledged
  (moto's own timestamps have one-second resolution). After the run every L0 file is
  decoded and searched for markers; a commit's lag is the time of the first L0 file holding its
  marker minus its commit time. Nothing is inferred from TXIDs, which differ between the tools.
* CPU: utime+stime of the agent process from /proc/<pid>/stat; peak RSS: VmHWM from
  /proc/<pid>/status (agents) or wait4's ru_maxrss (restores).
* S3 requests: the same proxy's log (one entry per HTTP request), filtered by the scenario's prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV_BIN = Path(sys.executable).parent
LIFEBOAT = str(VENV_BIN / "lifeboat") if (VENV_BIN / "lifeboat").exists() else shutil.which("lifeboat")
LITESTREAM = str(VENV_BIN / "litestream") if (VENV_BIN / "litestream").exists() else shutil.which("litestream")
MOTO = str(VENV_BIN / "moto_server") if (VENV_BIN / "moto_server").exists() else shutil.which("moto_server")
TOOLS = ("lifeboat", "litestream")
CLK_TCK = os.sysconf("SC_CLK_TCK")
BUCKET = "bench"
MARK = re.compile(rb"MRK(\d{8})")
RESTORE_REPEATS = 3
LATENCY_MS = 20  # a cloud object store's answer time (10-50 ms), added to every request



def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tool_env(tool: str) -> dict[str, str]:
    env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
    if tool == "litestream":
        env.pop("AWS_CA_BUNDLE", None)  # litestream fails with "unable to add custom RootCAs" otherwise
    return env


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class AgentProc:
    """`replicate -config` of one tool, with CPU and RSS read from /proc while it runs."""

    def __init__(self, tool: str, config: Path, logfile: Path) -> None:
        self.tool = tool
        exe = LIFEBOAT if tool == "lifeboat" else LITESTREAM
        self._log = open(logfile, "w")
        self.logfile = logfile
        self.proc = subprocess.Popen([exe, "replicate", "-config", str(config)], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=tool_env(tool))
        self.cpu0 = 0.0

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def rss(self) -> float:
        return peak_rss_mb(self.proc.pid)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.tool} exited {self.proc.returncode}: {self.logfile.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# A small launcher forks and execs the command and reports wait4's rusage: a child forked from this
# (large) harness would inherit its RSS high-water mark into ru_maxrss.
LAUNCHER = r"""
import json, os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, ru = os.wait4(pid, 0)
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_seconds": ru.ru_utime + ru.ru_stime,
                  "peak_rss_mb": ru.ru_maxrss / 1024, "code": os.waitstatus_to_exitcode(status)}),
      file=sys.stderr)
"""


def timed_run(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run to completion; wall seconds, CPU seconds and peak RSS (wait4 in a small launcher)."""
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", LAUNCHER, *cmd], capture_output=True, text=True, env=env)
    lines = proc.stderr.strip().splitlines()
    res = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {"code": proc.returncode}
    if res.pop("code") != 0:
        raise RuntimeError(f"{cmd[0]} {cmd[1]} failed: {proc.stderr[-1500:]}")
    return res


class RecordingProxy:
    """A reverse proxy in front of moto that notes each request's method, path and completion time.

    moto's own timestamps (LastModified, its request log) have one-second resolution; this gives
    the moment each PUT was acknowledged to the agent, to the microsecond. It costs both tools the
    same extra hop on localhost.
    """

    def __init__(self, upstream_port: int) -> None:
        import http.client
        import http.server

        self.log: list[tuple[str, str, float, int]] = []
        lock = threading.Lock()
        records = self.log

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _forward(self) -> None:
                conn = getattr(self.server, "_conns", {}).get(threading.get_ident())
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=120)
                    self.server._conns = {**getattr(self.server, "_conns", {}), threading.get_ident(): conn}
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    body = b"".join(chunks)
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                    headers["Content-Length"] = str(len(body))
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    headers = dict(self.headers.items())
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response_only(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                self.wfile.flush()
                with lock:
                    records.append((self.command, self.path, time.time(), resp.status))

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


class Moto:
    """moto_server on a free port, behind a RecordingProxy that the agents talk to."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.logfile = work / "moto.log"
        self._log = open(self.logfile, "w")
        self.proc = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.proxy = RecordingProxy(self.port)
        self.endpoint = f"http://127.0.0.1:{self.proxy.port}"  # what the agents use
        import boto3

        self.s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.port}", region_name="us-east-1",
                               aws_access_key_id="bench", aws_secret_access_key="bench")
        deadline = time.monotonic() + 30
        while True:
            try:
                self.s3.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def requests(self, prefix: str) -> dict[str, int]:
        """Agent HTTP requests naming `prefix` (in the path or the list query), by method."""
        counts: dict[str, int] = {}
        for method, path, _, _ in list(self.proxy.log):
            if prefix in path.replace("%2F", "/"):
                counts[method] = counts.get(method, 0) + 1
        return counts

    def put_times(self, prefix: str) -> dict[str, float]:
        """Object key (without the bucket) -> when its successful PUT was acknowledged."""
        out: dict[str, float] = {}
        for method, path, when, status in list(self.proxy.log):
            key = path.split("?", 1)[0].lstrip("/").removeprefix(BUCKET + "/")
            if method == "PUT" and status < 300 and key.startswith(prefix):
                out.setdefault(key, when)
        return out

    def objects(self, prefix: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            out += page.get("Contents", [])
        return out

    def stop(self) -> None:
        self.proxy.stop()
        self.proc.terminate()
        self.proc.wait(10)
        self._log.close()


# ---- configuration -----------------------------------------------------------------------------------


def write_config(path: Path, db: Path, replica: dict[str, Any], **extra: Any) -> Path:
    """One YAML both tools read: a database and its replica (file URL or S3 settings)."""
    lines = []
    for k, v in extra.items():
        lines.append(f"{k}: {v}")
    lines += ["dbs:", f"  - path: {db}", "    replica:"]
    lines += [f"      {k}: {json.dumps(v) if isinstance(v, bool) else v}" for k, v in replica.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def file_replica(root: Path) -> dict[str, Any]:
    return {"url": f"file://{root}"}


def s3_replica(moto: Moto, prefix: str) -> dict[str, Any]:
    return {"type": "s3", "bucket": BUCKET, "path": prefix, "endpoint": moto.endpoint, "region": "us-east-1",
            "force-path-style": True}


def create_db(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    conn.close()


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def marker(n: int, size: int) -> str:
    head = f"MRK{n:08d}"
    return head + os.urandom(max(0, size - len(head)) // 2 + 1).hex()[: max(0, size - len(head))]


# ---- replica observation -------------------------------------------------------------------------------


class DirWatch:
    """When each LTX file appears in a directory (inotify, in a thread with its own event loop)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()
        self._ready.wait(10)

    async def _run(self) -> None:
        from asyncinotify import Inotify, Mask

        with Inotify() as ino:
            ino.add_watch(self.dir, Mask.MOVED_TO | Mask.CLOSE_WRITE | Mask.CREATE)
            for name in os.listdir(self.dir):  # already there before the watch
                self.seen.setdefault(name, time.time())
            self._ready.set()
            # One read outlives the stop checks: cancelling it (asyncio.wait_for) at a timeout that
            # met an event delayed that event to the next read, 0.2 s later.
            read = asyncio.ensure_future(ino.get())
            while not self._stop.is_set():
                done, _ = await asyncio.wait({read}, timeout=0.2)
                if not done:
                    continue
                event, read = read.result(), asyncio.ensure_future(ino.get())
                name = str(event.name) if event.name is not None else ""
                # A rename (MOVED_TO) or a link(2) of a finished temp file (CREATE) publishes a
                # whole file at once; CLOSE_WRITE covers a tool writing the final name directly.
                if name.endswith(".ltx") and (event.mask & (Mask.MOVED_TO | Mask.CLOSE_WRITE | Mask.CREATE)):
                    self.seen.setdefault(name, time.time())

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self.thread.join(5)
        return {n: t for n, t in self.seen.items() if n.endswith(".ltx")}


def l0_dir(replica_root: Path) -> Path:
    return replica_root / "ltx" / "0"


def max_txid(directory: Path) -> int:
    """The highest TXID of the LTX files in one level's directory (0: none)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    return max((int(n.split("-")[1].split(".")[0], 16) for n in names if n.endswith(".ltx")), default=0)


def wait_compacted(replica_root: Path, timeout: float) -> None:
    """Until L1 holds every TXID L0 holds: a window of writes is charged the 30 s L1 compaction of
    its own files, and the next window does not start in the middle of it."""
    target = max_txid(l0_dir(replica_root))
    wait_for(lambda: max_txid(replica_root / "ltx" / "1") >= target, timeout, f"L1 compaction up to TXID {target}")


def markers_in(data: bytes) -> set[int]:
    """Commit markers in an LTX file's pages."""
    import io

    from lifeboat.agent import ltx

    found: set[int] = set()
    for _pgno, page in ltx.Decoder(io.BytesIO(data), "bench").pages():
        found.update(int(m) for m in MARK.findall(page))
    return found


def lag_stats(commits: dict[int, float], files: list[tuple[float, bytes]]) -> dict[str, Any]:
    """Lag of each commit: first replica file holding its marker, minus its commit time."""
    durable: dict[int, float] = {}
    for when, data in sorted(files, key=lambda f: f[0]):
        for n in markers_in(data):
            durable.setdefault(n, when)
    lags = sorted(durable[n] - t for n, t in commits.items() if n in durable)
    return {**summary(lags), "commits": len(commits), "unmapped": len(commits) - len(lags)}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))]


def summary(sorted_values: list[float]) -> dict[str, Any]:
    v = sorted_values
    return {"p50": pct(v, 50), "p99": pct(v, 99), "max": v[-1] if v else float("nan"),
            "mean": statistics.fmean(v) if v else float("nan")}


# ---- workload -----------------------------------------------------------------------------------------


def steady_writer(db: Path, rate: float, seconds: float, size: int = 100,
                  check: Callable[[], None] | None = None) -> dict[int, float]:
    """`rate` small commits per second for `seconds`; returns marker -> commit wall time."""
    conn = connect(db)
    commits: dict[int, float] = {}
    start = time.monotonic()
    n = 0
    while True:
        due = start + n / rate
        now = time.monotonic()
        if due - start >= seconds:
            break
        if due > now:
            time.sleep(due - now)
        conn.execute("INSERT INTO t (v) VALUES (?)", (marker(n, size),))
        commits[n] = time.time()
        n += 1
        if check is not None and n % 50 == 0:
            check()
    conn.close()
    return commits


def wait_quiet(directory: Path, quiet: float, timeout: float) -> float:
    """Until no file in `directory` changes for `quiet` seconds; returns the last change's time."""
    def state() -> tuple[int, int]:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return (0, 0)
        return (len(names), max((os.stat(directory / n).st_size for n in names[-3:]), default=0))

    last = state()
    last_change = time.time()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        cur = state()
        if cur != last:
            last, last_change = cur, time.time()
        elif time.time() - last_change >= quiet:
            break
    return last_change


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


# ---- scenarios ----------------------------------------------------------------------------------------


def scenario_lag_file(work: Path, args: argparse.Namespace, rate: float, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"rate_per_s": rate, "seconds": seconds}
    for tool in TOOLS:
        d = work / f"lagfile-{rate:g}-{tool}"
        d.mkdir()
        db, replica = d / "app.db", d / "replica"
        create_db(db)
        agent = AgentProc(tool, write_config(d / "cfg.yml", db, file_replica(replica)), d / "agent.log")
        try:
            wait_for(lambda: l0_dir(replica).is_dir() and os.listdir(l0_dir(replica)), 30, f"{tool} first L0")
            watch = DirWatch(l0_dir(replica))
            time.sleep(1)
            cpu0 = agent.cpu()
            t0 = time.monotonic()
            commits = steady_writer(db, rate, seconds, check=agent.check)
            wait_quiet(l0_dir(replica), 2.5, 30)
            elapsed = time.monotonic() - t0
            cpu = agent.cpu() - cpu0
            rss = agent.rss()
            seen = watch.stop()
        finally:
            agent.stop()
        files = [(t, (l0_dir(replica) / n).read_bytes()) for n, t in seen.items() if (l0_dir(replica) / n).exists()]
        out[tool] = {"lag": lag_stats(commits, files), "cpu_seconds": cpu, "cpu_window_seconds": elapsed,
                     "cpu_ms_per_commit": cpu / len(commits) * 1000 if commits else float("nan"),
                     "peak_rss_mb": rss, "l0_files": len(files)}
        log(f"lag/file {rate:g}/s {tool}: {out[tool]['lag']} cpu={cpu:.2f}s rss={rss:.1f}MB")
    return out


def scenario_lag_s3(work: Path, args: argparse.Namespace, moto: Moto) -> dict[str, Any]:
    out: dict[str, Any] = {"rate_per_s": args.rate, "seconds": args.lag_seconds}
    for tool in TOOLS:
        d = work / f"lags3-{tool}"
        d.mkdir()
        db = d / "app.db"
        prefix = f"lags3-{tool}"
        create_db(db)
        agent = AgentProc(tool, write_config(d / "cfg.yml", db, s3_replica(moto, prefix)), d / "agent.log")
        t_start = time.monotonic()
        try:
            wait_for(lambda: agent.check() or moto.objects(prefix + "/0000/"), 30, f"{tool} first L0 on S3")
            time.sleep(1)
            before = moto.requests(prefix)
            cpu0 = agent.cpu()
            t0 = time.monotonic()
            commits = steady_writer(db, args.rate, args.lag_seconds, check=agent.check)
            time.sleep(3)  # the last upload (sync-interval 1 s) lands
            window = time.monotonic() - t0
            cpu = agent.cpu() - cpu0
            rss = agent.rss()
            after = moto.requests(prefix)
        finally:
            agent.stop()
        acked = moto.put_times(prefix + "/0000/")
        files = []
        for o in moto.objects(prefix + "/0000/"):
            body = moto.s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
            files.append((acked.get(o["Key"], o["LastModified"].timestamp()), body))
        writes = sum(after.get(m, 0) - before.get(m, 0) for m in ("PUT", "POST"))
        total = sum(after.values()) - sum(before.values())
        out[tool] = {
            "lag": lag_stats(commits, files), "cpu_seconds": cpu, "peak_rss_mb": rss,
            "put_per_min": writes / window * 60, "requests_per_min": total / window * 60,
            "requests_by_method": {m: after.get(m, 0) - before.get(m, 0) for m in after},
            "window_seconds": window, "lifetime_seconds": time.monotonic() - t_start,
        }
        log(f"lag/s3 {tool}: p99={out[tool]['lag']['p99']:.3f}s PUT/min={out[tool]['put_per_min']:.1f} "
            f"req/min={out[tool]['requests_per_min']:.1f}")
    return out


class FollowProc(AgentProc):
    """Lifeboat's follow mode, `restore -f -config` into `out`, with its HTTP port at the config's addr."""

    def __init__(self, config: Path, out: Path, logfile: Path) -> None:
        self.tool = "lifeboat"
        self._log = open(logfile, "w")
        self.logfile = logfile
        self.proc = subprocess.Popen([LIFEBOAT, "restore", "-f", "-config", str(config), str(out)], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=tool_env("lifeboat"))
        self.cpu0 = 0.0


class FollowReader:
    """The follower's reader: a read-only connection polling every 10 ms for new rows; notes when
    each commit marker first becomes visible, and samples lifeboat_follow_lag_seconds meanwhile."""

    def __init__(self, out: Path, metrics_port: int) -> None:
        self.out = out
        self.port = metrics_port
        self.seen: dict[int, float] = {}
        self.metric: list[float] = []
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._read, daemon=True),
                        threading.Thread(target=self._sample, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _read(self) -> None:
        conn = sqlite3.connect(f"file:{self.out}?mode=ro", uri=True, isolation_level=None, timeout=30)
        last = 0
        while not self._stop.is_set():
            try:
                rows = conn.execute("SELECT id, substr(v, 1, 11) FROM t WHERE id > ?", (last,)).fetchall()
            except sqlite3.Error:
                rows = []
            now = time.time()
            for rowid, head in rows:
                last = max(last, rowid)
                m = MARK.match(head.encode())
                if m:
                    self.seen.setdefault(int(m.group(1)), now)
            time.sleep(0.01)
        conn.close()

    def _sample(self) -> None:
        import urllib.request

        while not self._stop.wait(0.25):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as resp:
                    text = resp.read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("lifeboat_follow_lag_seconds"):
                    self.metric.append(float(line.rsplit(" ", 1)[1]))

    def stop(self) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(5)


def scenario_follow(work: Path, args: argparse.Namespace, moto: Moto) -> dict[str, Any]:
    """Follow lag: commit to visible in a follower's database, lifeboat writer and follower, defaults
    (the writer's sync-interval 1 s, the follower's -follow-interval 1 s), file and S3 replicas."""
    out: dict[str, Any] = {"rate_per_s": args.rate, "seconds": args.lag_seconds, "follow_interval": "1s"}
    for kind in ("file", "s3"):
        d = work / f"follow-{kind}"
        d.mkdir()
        db, copy = d / "app.db", d / "follower.db"
        prefix = f"follow-{kind}"
        replica = file_replica(d / "replica") if kind == "file" else s3_replica(moto, prefix)
        create_db(db)
        port = free_port()
        writer = AgentProc("lifeboat", write_config(d / "cfg.yml", db, replica), d / "agent.log")
        follower = None
        try:
            l0 = l0_dir(d / "replica")
            if kind == "file":
                wait_for(lambda: writer.check() or (l0.is_dir() and os.listdir(l0)), 30, "the first L0 file")
            else:
                wait_for(lambda: writer.check() or moto.objects(prefix + "/0000/"), 30, "the first L0 file on S3")
            follower = FollowProc(write_config(d / "follow.yml", copy, replica, addr=f"127.0.0.1:{port}"), copy,
                                  d / "follow.log")
            wait_for(lambda: follower.check() or Path(f"{copy}-txid").exists(), 60, "the follower's first restore")
            reader = FollowReader(copy, port)
            time.sleep(1)
            cpu0 = follower.cpu()
            t0 = time.monotonic()
            commits = steady_writer(db, args.rate, args.lag_seconds, check=writer.check)
            wait_for(lambda: follower.check() or len(reader.seen) >= len(commits), 60, "every commit followed")
            cpu = follower.cpu() - cpu0
            window = time.monotonic() - t0
            rss = follower.rss()
            reader.stop()
        finally:
            if follower is not None:
                follower.stop()
            writer.stop()
        lags = sorted(reader.seen[n] - t for n, t in commits.items() if n in reader.seen)
        out[kind] = {"lag": {**summary(lags), "commits": len(commits), "unseen": len(commits) - len(lags)},
                     "lag_metric": summary(sorted(reader.metric)), "follower_cpu_seconds": cpu,
                     "follower_cpu_window_seconds": window, "follower_peak_rss_mb": rss}
        log(f"follow/{kind}: {out[kind]['lag']} metric={out[kind]['lag_metric']}")
    return out


def follow_markdown(res: dict[str, Any]) -> str:
    """The follow scenario's report (bench/results/follow.md)."""
    sc = res["scenarios"].get("follow")
    meta = res["meta"]
    lines = [
        "# Follow lag: a lifeboat writer and a `lifeboat restore -f` follower", "",
        f"{meta['started']}, {meta['machine']}, load average {meta['loadavg_start'][0]:.1f} at the start.", "",
        "The writer commits one ~100-byte row "
        f"{sc['rate_per_s']:g} times a second for {sc['seconds']:g} s; lag is the wall clock from "
        "COMMIT returning to the row being visible through a read-only connection to the follower's "
        "database (polled every 10 ms). Defaults: the writer's sync-interval 1 s, the follower's "
        f"-follow-interval {sc['follow_interval']}. S3 is moto on localhost behind a recording proxy.",
        "`lifeboat_follow_lag_seconds` is the follower's own gauge, sampled every 0.25 s.", "",
        "| replica | commits | lag p50 | lag p99 | lag max | gauge p50 | gauge p99 | follower CPU | follower RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ] if sc else ["# Follow lag", "", "The scenario did not run."]
    for kind in ("file", "s3"):
        if not sc or kind not in sc:
            continue
        r = sc[kind]
        lines.append(
            f"| {kind} | {r['lag']['commits']} ({r['lag']['unseen']} unseen) | {fmt(r['lag']['p50'], 's')} | "
            f"{fmt(r['lag']['p99'], 's')} | {fmt(r['lag']['max'], 's')} | {fmt(r['lag_metric']['p50'], 's')} | "
            f"{fmt(r['lag_metric']['p99'], 's')} | {fmt(r['follower_cpu_seconds'], 's')} in "
            f"{fmt(r['follower_cpu_window_seconds'], 's')} | {fmt(r['follower_peak_rss_mb'], ' MB')} |")
    return "\n".join(lines) + "\n"


def scenario_throughput(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Stream and bulk, `--repeats` times per tool (alternating which goes first); each tool's
    median run by CPU per GB is reported, stream and bulk separately, with every run's value."""
    out: dict[str, Any] = {"stream_seconds": args.stream_seconds, "row_bytes": 1024, "bulk_mb": args.bulk_mb,
                           "repeats": args.repeats}
    runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in TOOLS}
    for rep in range(args.repeats):
        for tool in TOOLS if rep % 2 == 0 else TOOLS[::-1]:
            runs[tool].append(_throughput_once(work / f"tput-{tool}-{rep}", tool, args))
    for tool, results in runs.items():
        res: dict[str, Any] = {"peak_rss_mb": max(r["peak_rss_mb"] for r in results)}
        for part in ("stream", "bulk"):
            ordered = sorted((r[part] for r in results), key=lambda x: x["cpu_s_per_gb"])
            res[part] = ordered[len(ordered) // 2] | {"all_cpu_s_per_gb": [r[part]["cpu_s_per_gb"] for r in results]}
        out[tool] = res
    return out


def _throughput_once(d: Path, tool: str, args: argparse.Namespace) -> dict[str, Any]:
    """One stream and one bulk run of `tool` against a fresh database and replica."""
    d.mkdir()
    db, replica = d / "app.db", d / "replica"
    create_db(db)
    agent = AgentProc(tool, write_config(d / "cfg.yml", db, file_replica(replica)), d / "agent.log")
    res: dict[str, Any] = {}
    try:
        wait_for(lambda: agent.check() or (l0_dir(replica).is_dir() and os.listdir(l0_dir(replica))), 30,
                 f"{tool} first L0")
        time.sleep(1)
        # Sustained stream: as many 1 KB-row commits as the application manages.
        conn = connect(db)
        cpu0 = agent.cpu()
        t0 = time.monotonic()
        n = 0
        payload = 0
        while time.monotonic() - t0 < args.stream_seconds:
            v = marker(n, 1024)
            conn.execute("INSERT INTO t (v) VALUES (?)", (v,))
            n += 1
            payload += len(v)
        write_s = time.monotonic() - t0
        t_end = time.time()
        conn.close()
        last = wait_quiet(l0_dir(replica), 3, 120)
        catch_up = max(0.0, last - t_end)
        wait_compacted(replica, 90)
        cpu = agent.cpu() - cpu0
        res["stream"] = {"commits": n, "commits_per_s": n / write_s, "payload_mb": payload / 2**20,
                         "cpu_seconds": cpu, "cpu_s_per_gb": cpu / (payload / 2**30),
                         "catch_up_seconds": catch_up}
        log(f"stream {tool}: {res['stream']}")
        # Bulk: one transaction of `bulk_mb` MB, spilling into the WAL as it goes.
        conn = connect(db)
        conn.execute("PRAGMA cache_size = -4096")
        cpu0 = agent.cpu()
        rows = args.bulk_mb * 2**20 // 4000
        conn.execute("BEGIN")
        for i in range(rows):
            conn.execute("INSERT INTO t (v) VALUES (?)", (os.urandom(2000).hex(),))
        t_commit = time.time()
        conn.execute("COMMIT")
        t_commit = (t_commit + time.time()) / 2
        conn.close()
        last = wait_quiet(l0_dir(replica), 4, 600)
        wait_compacted(replica, 90)
        cpu = agent.cpu() - cpu0
        bulk_mb = rows * 4000 / 2**20  # one ~4 KB row per page: the WAL grows by about as much
        res["bulk"] = {"payload_mb": bulk_mb, "cpu_seconds": cpu, "cpu_s_per_gb": cpu / (bulk_mb / 1024),
                       "ship_seconds": last - t_commit}
        res["peak_rss_mb"] = agent.rss()
        log(f"bulk {tool}: {res['bulk']} rss={res['peak_rss_mb']:.1f}MB")
    finally:
        agent.stop()
    return res


def scenario_idle(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    agents = {}
    for tool in TOOLS:  # both at once: idle agents do not compete for CPU
        d = work / f"idle-{tool}"
        d.mkdir()
        db, replica = d / "app.db", d / "replica"
        create_db(db)
        conn = connect(db)
        for i in range(200):
            conn.execute("INSERT INTO t (v) VALUES (?)", (marker(i, 200),))
        conn.close()
        agents[tool] = (AgentProc(tool, write_config(d / "cfg.yml", db, file_replica(replica)), d / "agent.log"),
                        replica)
    try:
        for tool, (a, replica) in agents.items():
            wait_for(lambda: a.check() or (l0_dir(replica).is_dir() and os.listdir(l0_dir(replica))), 30, tool)
        time.sleep(5)
        cpu0 = {t: a.cpu() for t, (a, _) in agents.items()}
        time.sleep(args.idle_seconds)
        out: dict[str, Any] = {"seconds": args.idle_seconds}
        for t, (a, _) in agents.items():
            a.check()
            out[t] = {"cpu_seconds": a.cpu() - cpu0[t], "peak_rss_mb": a.rss()}
    finally:
        for a, _ in agents.values():
            a.stop()
    log(f"idle: {out}")
    return out


def _l0_files(replica: Path) -> dict[int, int]:
    """Max TXID -> size of each L0 file in a file replica."""
    out: dict[int, int] = {}
    for name in os.listdir(l0_dir(replica)) if l0_dir(replica).is_dir() else []:
        m = re.fullmatch(r"([0-9a-f]{16})-([0-9a-f]{16})\.ltx", name)
        if m:
            out[int(m.group(2), 16)] = os.stat(l0_dir(replica) / name).st_size
    return out


def scenario_reader(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """An application read transaction held open: replica files written per minute and WAL growth,
    first with the application idle, then with it committing at `--rate`. One tool at a time."""
    out: dict[str, Any] = {"seconds": args.reader_seconds, "rate_per_s": args.rate}
    for tool in TOOLS:
        d = work / f"reader-{tool}"
        d.mkdir()
        db, replica = d / "app.db", d / "replica"
        create_db(db)
        agent = AgentProc(tool, write_config(d / "cfg.yml", db, file_replica(replica)), d / "agent.log")
        wal = Path(f"{db}-wal")
        try:
            wait_for(lambda: agent.check() or _l0_files(replica), 30, f"{tool} first L0")
            reader = sqlite3.connect(db, isolation_level=None)
            reader.execute("BEGIN")
            reader.execute("SELECT COUNT(*) FROM t").fetchone()
            # Past min-checkpoint-page-count behind the reader's mark: checkpoints are due and blocked.
            conn = connect(db)
            for i in range(1500):
                conn.execute("INSERT INTO t (v) VALUES (?)", (marker(i, 3000),))
            conn.close()
            time.sleep(3)
            res: dict[str, Any] = {}
            for phase, rate in (("idle", 0.0), ("writing", args.rate)):
                txid0, wal0 = max(_l0_files(replica), default=0), wal.stat().st_size
                if rate:
                    steady_writer(db, rate, args.reader_seconds, check=agent.check)
                else:
                    time.sleep(args.reader_seconds)
                time.sleep(2)  # let the last commits ship
                agent.check()
                minutes = args.reader_seconds / 60
                res[phase] = {"files_per_min": (max(_l0_files(replica), default=0) - txid0) / minutes,
                              "wal_growth_mb": (wal.stat().st_size - wal0) / 1e6}
            reader.execute("COMMIT")
            reader.close()
            res["cpu_seconds"] = agent.cpu()
            out[tool] = res
        finally:
            agent.stop()
    log(f"reader: {out}")
    return out


def scenario_restart(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Bytes an agent restart ships: a graceful stop (the agent is the last connection, so SQLite
    checkpoints and deletes the WAL on close), a start, then a few commits. One tool at a time."""
    out: dict[str, Any] = {"db_mb": args.restart_mb}
    for tool in TOOLS:
        d = work / f"restart-{tool}"
        d.mkdir()
        db, replica = d / "app.db", d / "replica"
        create_db(db)
        conn = connect(db)
        for i in range(args.restart_mb * 1000):
            conn.execute("INSERT INTO t (v) VALUES (?)", (marker(i, 1000),))
        conn.close()
        cfg = write_config(d / "cfg.yml", db, file_replica(replica))
        agent = AgentProc(tool, cfg, d / "agent1.log")
        try:
            wait_for(lambda: agent.check() or _l0_files(replica), 60, f"{tool} first L0")
            wait_quiet(l0_dir(replica), 3, 60)
        finally:
            agent.stop()
        before = _l0_files(replica)
        agent = AgentProc(tool, cfg, d / "agent2.log")
        try:
            time.sleep(3)  # started and caught up; then the application's first commits after the restart
            conn = connect(db)
            for i in range(3):
                conn.execute("INSERT INTO t (v) VALUES (?)", (marker(10**7 + i, 100),))
            conn.close()
            wait_for(lambda: agent.check() or len(_l0_files(replica)) > len(before), 60, f"{tool} restart L0")
            wait_quiet(l0_dir(replica), 3, 60)
        finally:
            agent.stop()
        after = _l0_files(replica)
        out[tool] = {"bytes_shipped": sum(size for txid, size in after.items() if txid not in before),
                     "files": len(after.keys() - before.keys())}
    log(f"restart: {out}")
    return out


def build_restore_replica(d: Path, args: argparse.Namespace, moto: Moto, prefix: str) -> dict[str, Any]:
    """A `restore_mb` database replicated by lifeboat into `d/replica` (an L9 snapshot, then about
    `restore_l0` L0 files), and uploaded to moto under `prefix` in Litestream's S3 key layout."""
    d.mkdir()
    db, replica = d / "app.db", d / "replica"
    create_db(db)
    conn = connect(db)
    conn.execute("BEGIN")
    for i in range(args.restore_mb * 2**20 // 2000):
        conn.execute("INSERT INTO t (v) VALUES (?)", (os.urandom(500).hex() + "ab" * 500,))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    db_mb = os.path.getsize(db) / 2**20
    log(f"restore: built a {db_mb:.0f} MB database; replicating it with lifeboat")
    # One L1 compaction at start-up only (24 h interval), so the replica is snapshot + L0 chain.
    cfg = write_config(d / "cfg.yml", db, file_replica(replica), levels="[{interval: 24h}]")
    agent = AgentProc("lifeboat", cfg, d / "agent.log")
    try:
        wait_for(lambda: agent.check() or ((replica / "ltx" / "9").is_dir() and os.listdir(replica / "ltx" / "9")),
                 600, "the L9 snapshot")
        conn = connect(db)
        deadline = time.monotonic() + 300
        i = 0
        while len(os.listdir(l0_dir(replica))) < args.restore_l0 + 1 and time.monotonic() < deadline:
            conn.execute("INSERT INTO t (v) VALUES (?)", (marker(i, 300),))
            i += 1
            time.sleep(0.004)
        conn.close()
        wait_quiet(l0_dir(replica), 2, 60)
    finally:
        agent.stop()
    levels = {lvl: len(os.listdir(replica / "ltx" / lvl)) for lvl in sorted(os.listdir(replica / "ltx"))}
    log(f"restore: replica levels {levels}; uploading it to S3")
    for lvl in os.listdir(replica / "ltx"):
        for name in os.listdir(replica / "ltx" / lvl):
            moto.s3.upload_file(str(replica / "ltx" / lvl / name), BUCKET, f"{prefix}/{int(lvl):04x}/{name}")
    return {"db_mb": db_mb, "replica_files": levels, "writes_after_snapshot": i}


def restore_runs(d: Path, url: str, label: str) -> dict[str, Any]:
    """Each tool restores `url` RESTORE_REPEATS times, alternating which goes first, after a sync (so
    that neither pays for the other's, or the set-up's, writeback); each tool's median run."""
    runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in TOOLS}
    for rep in range(RESTORE_REPEATS):
        for tool in TOOLS if rep % 2 == 0 else TOOLS[::-1]:
            target = d / f"out-{label}-{tool}.db"
            exe = LIFEBOAT if tool == "lifeboat" else LITESTREAM
            os.sync()
            r = timed_run([exe, "restore", "-o", str(target), url], tool_env(tool))
            conn = sqlite3.connect(target)
            r["rows"] = conn.execute("SELECT count(*) FROM t").fetchone()[0]
            conn.close()
            runs[tool].append(r)
            log(f"restore {label} {tool}: {r}")
            target.unlink()
    out: dict[str, Any] = {}
    for tool, results in runs.items():
        median = sorted(results, key=lambda r: r["seconds"])[len(results) // 2]
        out[tool] = median | {"all_seconds": [r["seconds"] for r in results]}
    return out


def scenario_restore(work: Path, args: argparse.Namespace, moto: Moto) -> dict[str, Any]:
    d = work / "restore"
    out = build_restore_replica(d, args, moto, "restore")
    s3_url = f"s3://{BUCKET}/restore?endpoint={moto.endpoint}&forcePathStyle=true&region=us-east-1"
    for store, url in (("file", f"file://{d / 'replica'}"), ("s3", s3_url)):
        out[store] = restore_runs(d, url, store)
    return out


def scenario_restore_latency(work: Path, args: argparse.Namespace, moto: Moto) -> dict[str, Any]:
    """Scenario 5 from S3 with LATENCY_MS added to every request (bench/latency_proxy.py, straight
    in front of moto: the recording proxy would buffer whole bodies)."""
    import importlib.util

    # By path: `python -P bench/run.py` puts no bench/ on sys.path.
    spec = importlib.util.spec_from_file_location("latency_proxy", BENCH / "latency_proxy.py")
    assert spec is not None and spec.loader is not None
    latency_proxy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(latency_proxy)
    d = work / "restore_latency"
    out = build_restore_replica(d, args, moto, "restore-latency")
    proxy = latency_proxy.LatencyProxy(moto.port, LATENCY_MS / 1000)
    try:
        url = (f"s3://{BUCKET}/restore-latency?endpoint=http://127.0.0.1:{proxy.port}&forcePathStyle=true"
               "&region=us-east-1")
        out["s3"] = restore_runs(d, url, "s3-latency")
    finally:
        proxy.stop()
    out["latency_ms"] = LATENCY_MS
    for r in out["s3"].values():
        r["mb_per_s"] = out["db_mb"] / r["seconds"]
    return out


def scenario_webhook(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(BENCH / "webhook_bench.py"), str(args.admissions)],
                          capture_output=True, text=True, timeout=600, cwd=work)
    if proc.returncode != 0:
        raise RuntimeError(f"webhook bench failed: {proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"webhook: {res}")
    return res


# ---- report ------------------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def fmt(v: Any, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    if isinstance(v, float):
        return (f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}") + unit
    return f"{v}{unit}"


def markdown(res: dict[str, Any]) -> str:
    # A target is judged on the ratio and, where it also names an absolute bound, lifeboat's value.
    rows: list[tuple[str, Any, Any, str, Callable[[float, float], bool] | None]] = []
    s = res["scenarios"]

    def add(name: str, lb: Any, ls: Any, target: str = "", ok: Callable[[float, float], bool] | None = None) -> None:
        rows.append((name, lb, ls, target, ok))

    if "lag_file" in s:
        x = s["lag_file"]
        for q in ("p50", "p99", "max"):
            add(f"1. file lag {q} (s)", x["lifeboat"]["lag"][q], x["litestream"]["lag"][q],
                "≤ 0.1× and ≤ 0.050 s" if q == "p99" else "",
                (lambda r, v: r <= 0.1 and v <= 0.05) if q == "p99" else None)
        add("1. agent CPU during the run (s)", x["lifeboat"]["cpu_seconds"], x["litestream"]["cpu_seconds"])
        add(f"1. agent CPU per commit at {x['rate_per_s']:g}/s (ms)", x["lifeboat"]["cpu_ms_per_commit"],
            x["litestream"]["cpu_ms_per_commit"], "≤ 3×", lambda r, v: r <= 3)
        add("1. peak RSS (MB)", x["lifeboat"]["peak_rss_mb"], x["litestream"]["peak_rss_mb"], "≤ 1.2×",
            lambda r, v: r <= 1.2)
    if "lag_file_fast" in s:
        x = s["lag_file_fast"]
        rate = f"{x['rate_per_s']:g}/s"
        add(f"1b. file lag p99 at {rate} (s)", x["lifeboat"]["lag"]["p99"], x["litestream"]["lag"]["p99"])
        add(f"1b. agent CPU per commit at {rate} (ms)", x["lifeboat"]["cpu_ms_per_commit"],
            x["litestream"]["cpu_ms_per_commit"])
        add(f"1b. L0 files per commit at {rate}", x["lifeboat"]["l0_files"] / max(1, x["lifeboat"]["lag"]["commits"]),
            x["litestream"]["l0_files"] / max(1, x["litestream"]["lag"]["commits"]))
    if "lag_s3" in s:
        x = s["lag_s3"]
        for q in ("p50", "p99", "max"):
            add(f"2. S3 lag {q} (s)", x["lifeboat"]["lag"][q], x["litestream"]["lag"][q])
        add("2. S3 PUT requests/min", x["lifeboat"]["put_per_min"], x["litestream"]["put_per_min"], "≤ 1.0×",
            lambda r, v: r <= 1.0)
        add("2. S3 requests/min (all methods)", x["lifeboat"]["requests_per_min"],
            x["litestream"]["requests_per_min"])
        add("2. agent CPU during the run (s)", x["lifeboat"]["cpu_seconds"], x["litestream"]["cpu_seconds"])
        add("2. peak RSS (MB)", x["lifeboat"]["peak_rss_mb"], x["litestream"]["peak_rss_mb"], "≤ 1.2×",
            lambda r, v: r <= 1.2)
    if "throughput" in s:
        x = s["throughput"]
        add("3. stream: 1 KB commits/s achieved", x["lifeboat"]["stream"]["commits_per_s"],
            x["litestream"]["stream"]["commits_per_s"])
        runs = f"median of {x.get('repeats', 1)}"
        add(f"3. stream: CPU s per GB committed ({runs})", x["lifeboat"]["stream"]["cpu_s_per_gb"],
            x["litestream"]["stream"]["cpu_s_per_gb"], "≤ 0.8×", lambda r, v: r <= 0.8)
        add(f"3. bulk {x['bulk_mb']} MB txn: CPU s per GB committed ({runs})", x["lifeboat"]["bulk"]["cpu_s_per_gb"],
            x["litestream"]["bulk"]["cpu_s_per_gb"], "≤ 0.7×", lambda r, v: r <= 0.7)
        add("3. bulk: commit → last L0 durable (s)", x["lifeboat"]["bulk"]["ship_seconds"],
            x["litestream"]["bulk"]["ship_seconds"])
        add("3. peak RSS (MB)", x["lifeboat"]["peak_rss_mb"], x["litestream"]["peak_rss_mb"], "≤ 1.5×",
            lambda r, v: r <= 1.5)
    if "idle" in s:
        x = s["idle"]
        add(f"4. idle CPU in {x['seconds']} s (s)", x["lifeboat"]["cpu_seconds"], x["litestream"]["cpu_seconds"],
            "≤ 1.0×", lambda r, v: r <= 1.0)
        add("4. idle peak RSS (MB)", x["lifeboat"]["peak_rss_mb"], x["litestream"]["peak_rss_mb"], "≤ 1.2×",
            lambda r, v: r <= 1.2)
    if "reader" in s:
        x = s["reader"]
        for phase in ("idle", "writing"):
            add(f"7. reader held, app {phase}: replica files/min", x["lifeboat"][phase]["files_per_min"],
                x["litestream"][phase]["files_per_min"])
            add(f"7. reader held, app {phase}: WAL growth (MB)", x["lifeboat"][phase]["wal_growth_mb"],
                x["litestream"][phase]["wal_growth_mb"])
    if "restart" in s:
        x = s["restart"]
        add(f"8. agent restart of a {x['db_mb']} MB database: bytes shipped", x["lifeboat"]["bytes_shipped"],
            x["litestream"]["bytes_shipped"])
    if "restore" in s:
        x = s["restore"]
        for store in ("file", "s3"):
            add(f"5. restore {x['db_mb']:.0f} MB from {store} (s)", x[store]["lifeboat"]["seconds"],
                x[store]["litestream"]["seconds"], "≤ 0.5×", lambda r, v: r <= 0.5)
            add(f"5. restore from {store}: peak RSS (MB)", x[store]["lifeboat"]["peak_rss_mb"],
                x[store]["litestream"]["peak_rss_mb"], "≤ 1.5×", lambda r, v: r <= 1.5)
    if "restore_latency" in s:
        x = s["restore_latency"]
        at = f"from s3 at +{x['latency_ms']} ms a request"
        add(f"5b. restore {x['db_mb']:.0f} MB {at} (s)", x["s3"]["lifeboat"]["seconds"],
            x["s3"]["litestream"]["seconds"], "≤ 0.5×", lambda r, v: r <= 0.5)
        add(f"5b. restore {at}: throughput (MB/s)", x["s3"]["lifeboat"]["mb_per_s"],
            x["s3"]["litestream"]["mb_per_s"])
        add(f"5b. restore {at}: peak RSS (MB)", x["s3"]["lifeboat"]["peak_rss_mb"],
            x["s3"]["litestream"]["peak_rss_mb"], "≤ 1.5×", lambda r, v: r <= 1.5)
        add(f"5b. restore {at}: CPU of the median run (s)", x["s3"]["lifeboat"]["cpu_seconds"],
            x["s3"]["litestream"]["cpu_seconds"])
    lines = ["| metric | lifeboat | litestream 0.5.17 | ratio | target | met |", "|---|---:|---:|---:|---|---|"]
    for name, lb, ls, target, ok in rows:
        r = ratio(lb, ls) if isinstance(lb, (int, float)) and isinstance(ls, (int, float)) else None
        # Ratios are judged at the precision shown: CPU seconds come in 10 ms clock ticks.
        met = "" if ok is None or r is None else ("yes" if ok(round(r, 3), lb) else "**no**")
        lines.append(f"| {name} | {fmt(lb)} | {fmt(ls)} | {fmt(r, '×')} | {target} | {met} |")
    if "webhook" in s:
        w = s["webhook"]
        lines.append(f"| 6. webhook admission p50 / p99 (ms), {w['admissions']} pods | {w['p50_ms']:.1f} / "
                     f"{w['p99_ms']:.1f} | — | — | p99 ≤ 20 ms | {'yes' if w['p99_ms'] <= 20 else '**no**'} |")
    m = res["meta"]
    head = [
        f"# Benchmark: lifeboat vs litestream 0.5.17 ({'quick' if m['quick'] else 'full'} run)", "",
        f"{m['started']} on {m['machine']}; {m['duration_s']:.0f} s in all; load average "
        f"{m['loadavg_start'][0]:.1f} at the start, {m['loadavg_end'][0]:.1f} at the end (other work shares this "
        "machine: latencies are noisier than CPU seconds, which are per process). Produced by `python bench/run.py"
        f"{' --quick' if m['quick'] else ''}`; method in bench/run.py's docstring.", "",
        f"`uptime` at the start: `{m.get('uptime_start', '')}`; at the end: `{m.get('uptime_end', '')}`.", "",
    ]
    notes = ["", "Scale (chosen to fit the 15-minute budget on this 2-core machine):"] + [f"- {n}" for n in m["notes"]]
    return "\n".join(head + lines + notes) + "\n"


def _uptime() -> str:
    """`uptime`'s line: how busy the shared machine was."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a ~3-minute smoke run")
    p.add_argument("--only", default="",
                   help="comma-separated: lag_file,lag_file_fast,lag_s3,throughput,idle,restore,"
                   "restore_latency,webhook,reader,restart,follow "
                   "(follow or restore_latency alone writes results/<scenario>.*)")
    p.add_argument("--rate", type=float, default=20.0, help="commits/s in the lag scenarios")
    p.add_argument("--fast-rate", type=float, default=200.0, help="commits/s in lag_file_fast")
    p.add_argument("--lag-seconds", type=float)
    p.add_argument("--fast-seconds", type=float, help="seconds of lag_file_fast")
    p.add_argument("--repeats", type=int, help="runs per tool of the throughput scenario (the median is shown)")
    p.add_argument("--stream-seconds", type=float)
    p.add_argument("--bulk-mb", type=int)
    p.add_argument("--idle-seconds", type=float)
    p.add_argument("--restore-mb", type=int)
    p.add_argument("--restore-l0", type=int)
    p.add_argument("--admissions", type=int)
    p.add_argument("--reader-seconds", type=float)
    p.add_argument("--restart-mb", type=int)
    p.add_argument("--out", type=Path, default=BENCH / "results")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    defaults = (dict(lag_seconds=15, fast_seconds=10, repeats=1, stream_seconds=8, bulk_mb=32,
                     idle_seconds=15, restore_mb=32, restore_l0=150,
                     admissions=100, reader_seconds=10, restart_mb=4) if args.quick else
                dict(lag_seconds=60, fast_seconds=30, repeats=3, stream_seconds=30, bulk_mb=256,
                     idle_seconds=60, restore_mb=256, restore_l0=1000,
                     admissions=500, reader_seconds=30, restart_mb=12))
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    only = set(filter(None, args.only.split(","))) or {"lag_file", "lag_file_fast", "lag_s3", "throughput", "idle",
                                                       "restore", "restore_latency", "webhook"}
    assert LIFEBOAT and LITESTREAM and MOTO, "needs lifeboat, litestream and moto_server in the virtualenv"
    work = Path(tempfile.mkdtemp(prefix="lifeboat-bench-"))
    started = time.monotonic()
    meta = {
        "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "quick": args.quick,
        "loadavg_start": os.getloadavg(),
        "uptime_start": _uptime(),
        "litestream": subprocess.run([LITESTREAM, "version"], capture_output=True, text=True).stdout.strip(),
        "settings": {k: getattr(args, k) for k in defaults} | {"rate": args.rate},
        "notes": [
            f"lag: {args.rate:g} commits/s of one ~100-byte row for {args.lag_seconds:g} s; default settings "
            "(monitor-interval 1 s, sync-interval 1 s) for both tools. 1b: the same at "
            f"{args.fast_rate:g} commits/s for {args.fast_seconds:g} s. CPU per commit: the agent's CPU over the "
            "writing (and shipping) window divided by the commits.",
            f"throughput: {args.stream_seconds:g} s of back-to-back 1 KB-row commits; the bulk transaction is "
            f"{args.bulk_mb} MB of rows (the brief's ~1 GB of WAL, scaled down to fit); CPU per GB is the agent's "
            f"CPU divided by the row bytes committed (~ the WAL bytes to ship), each window (stream, then bulk) "
            "ending once the 30 s L1 compaction holds its last TXID, so it pays for compacting its own files and "
            f"no other's; {args.repeats} run(s) per tool, "
            "alternating which goes first, each tool's median shown (all runs in latest.json).",
            f"restore: a {args.restore_mb} MB database, an L9 snapshot plus ~{args.restore_l0} L0 files written "
            "by lifeboat; each tool restores the same replica, from a directory and from moto S3, "
            f"{RESTORE_REPEATS} times in alternating order after a sync (the median run is shown).",
            f"restore_latency: the restore scenario's replica restored from moto S3 through bench/latency_proxy.py, "
            f"which holds every request back {LATENCY_MS} ms; lifeboat with its default -parallelism 8.",
            f"reader: a read transaction held open for {args.reader_seconds:g} s with the application idle, then "
            f"as long while it commits {args.rate:g} rows/s; files written = L0 TXIDs advanced, per minute.",
            f"restart: a {args.restart_mb} MB database, graceful stop (the WAL is deleted on the last close), start, "
            "3 commits: bytes of the L0 files the second agent wrote.",
            "S3 is moto on localhost (no network latency): lag there measures the agents, not the store.",
            f"webhook: {args.admissions} pod admissions over HTTPS to the real operator (kopf) against kmock; "
            "kmock's request history is cleared after each admission (it matches every request against all "
            "earlier ones, which otherwise makes the emulator, not the webhook, dominate and grow).",
        ],
    }
    res: dict[str, Any] = {"meta": meta, "scenarios": {}}
    moto = None
    try:
        if only & {"lag_s3", "restore", "restore_latency", "follow"}:
            moto = Moto(work)
        plan: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("lag_file", lambda: scenario_lag_file(work, args, args.rate, args.lag_seconds)),
            ("lag_file_fast", lambda: scenario_lag_file(work, args, args.fast_rate, args.fast_seconds)),
            ("lag_s3", lambda: scenario_lag_s3(work, args, moto)),  # type: ignore[arg-type]
            ("throughput", lambda: scenario_throughput(work, args)),
            ("idle", lambda: scenario_idle(work, args)),
            ("restore", lambda: scenario_restore(work, args, moto)),  # type: ignore[arg-type]
            ("restore_latency", lambda: scenario_restore_latency(work, args, moto)),  # type: ignore[arg-type]
            ("webhook", lambda: scenario_webhook(work, args)),
            ("reader", lambda: scenario_reader(work, args)),
            ("restart", lambda: scenario_restart(work, args)),
            ("follow", lambda: scenario_follow(work, args, moto)),  # type: ignore[arg-type]
        ]
        for name, fn in plan:
            if name not in only:
                continue
            log(f"scenario {name}")
            try:
                res["scenarios"][name] = fn()
            except Exception as exc:  # report what ran; one broken scenario does not void the rest
                log(f"scenario {name} failed: {exc}")
                res.setdefault("errors", {})[name] = str(exc)
    finally:
        if moto is not None:
            moto.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work directory kept: {work}")
    meta["duration_s"] = time.monotonic() - started
    meta["loadavg_end"] = os.getloadavg()
    meta["uptime_end"] = _uptime()
    args.out.mkdir(parents=True, exist_ok=True)
    # `--only follow` and `--only restore_latency` have reports of their own: results/<scenario>.*, not the
    # comparison in latest.*.
    if only == {"follow"}:
        name, md = "follow", follow_markdown(res)
    else:
        name = "restore_latency" if only == {"restore_latency"} else "latest"
        md = markdown(res)
    (args.out / f"{name}.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    if res.get("errors"):
        md += "\nFailed scenarios:\n" + "".join(f"- {k}: {v}\n" for k, v in res["errors"].items())
    (args.out / f"{name}.md").write_text(md)
    print(md)
    return 1 if res.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
