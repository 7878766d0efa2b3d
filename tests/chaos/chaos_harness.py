"""Crash-safety harness shared by `tests/chaos` and `bench/soak.py`.

One workspace = one application database, one file replica, one agent config. The application is a
separate process committing numbered rows (`id` 1, 2, 3, ... with a value derived from the id, so a
restored row can be checked byte for byte); after every COMMIT it publishes its committed count in a
small side file. The agent runs with frequent checkpoints, short compaction levels, short snapshot
and L0 retention, and an HTTP `addr:` so `/status` can be read.

What "replicated" means, honestly: `/status` reports `txid` (newest local L0 file) and `remote_txid`
(newest L0 durable in the replica), both null while the agent is still opening its database. Let C
be the application's committed count read at time ta, and
T the local txid read right after. L0 file T+1 may have been in the middle of being written at ta
(its WAL read may predate ta), but the sync that writes T+2 reads the WAL only after T+1 exists,
i.e. after ta: T+2 contains every row of the first C. So once `/status` shows `remote_txid >= T+2`
the agent has reported rows 1..C as replicated, and every later restore must contain them.

After every SIGKILL of the agent, `lifeboat restore` and `litestream restore` both run; each result
must pass `PRAGMA integrity_check`, hold exactly rows 1..n with their expected values (a prefix of
what the application committed) and n >= every acknowledged C.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

LIFEBOAT = [sys.executable, "-m", "lifeboat.agent.cli"]
LITESTREAM = str(Path(sys.executable).parent / "litestream")

APP_SCRIPT = r"""
import hashlib, os, random, sqlite3, struct, sys, time
db, counter, checkpoints = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
MODES = ("PASSIVE", "FULL", "RESTART", "TRUNCATE")
conn = sqlite3.connect(db, timeout=30, isolation_level=None)
conn.execute("PRAGMA busy_timeout = 30000")
fd = os.open(counter, os.O_RDWR | os.O_CREAT, 0o644)
def value(i):
    return hashlib.sha256(str(i).encode()).hexdigest() * (1 + i % 3)
n = conn.execute("SELECT COALESCE(MAX(id), 0) FROM t").fetchone()[0]
os.pwrite(fd, struct.pack("<QQ", n, n), 0)
rng = random.Random()
while True:
    k = rng.randint(1, 6)
    conn.execute("BEGIN IMMEDIATE")
    for i in range(n + 1, n + k + 1):
        conn.execute("INSERT INTO t (id, v) VALUES (?, ?)", (i, value(i)))
        if rng.random() < 0.3:
            time.sleep(0.001)  # widen the window for a SIGKILL in the middle of a transaction
    conn.execute("COMMIT")
    n += k
    os.pwrite(fd, struct.pack("<QQ", n, n), 0)
    if checkpoints and rng.random() < 0.02:
        # Applications checkpoint too, in every mode; a short busy timeout keeps a blocked one brief.
        conn.execute("PRAGMA busy_timeout = 50")
        conn.execute(f"PRAGMA wal_checkpoint({rng.choice(MODES)})").fetchall()
        conn.execute("PRAGMA busy_timeout = 30000")
    time.sleep(rng.uniform(0.0, 0.012))
"""

# An application reader: a report query or backup that keeps its read transaction open for a while.
READER_SCRIPT = r"""
import random, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
rng = random.Random()
while True:
    time.sleep(rng.uniform(0.2, 2.0))
    conn.execute("BEGIN")
    conn.execute("SELECT COUNT(*) FROM t").fetchone()
    time.sleep(rng.uniform(0.5, 5.0))
    conn.execute("COMMIT")
"""


def expected_value(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest() * (1 + i % 3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CheckFailed(AssertionError):
    """A restore lost acknowledged rows or produced a wrong database."""


@dataclass
class Stats:
    cycles: int = 0
    agent_kills: int = 0
    agent_stops: int = 0
    app_kills: int = 0
    max_replica_files: int = 0
    max_wal_bytes: int = 0
    restores: int = 0
    rows_committed: int = 0
    rows_verified: int = 0
    acked_max: int = 0
    lost: int = 0
    corrupt: int = 0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {
            "cycles": self.cycles,
            "faults_injected": self.agent_kills + self.app_kills,
            "agent_sigkills": self.agent_kills,
            "agent_graceful_stops": self.agent_stops,
            "max_replica_files": self.max_replica_files,
            "max_wal_bytes": self.max_wal_bytes,
            "app_sigkills": self.app_kills,
            "restores_checked": self.restores,
            "rows_committed": self.rows_committed,
            "rows_verified": self.rows_verified,
            "max_acknowledged_rows": self.acked_max,
            "lost": self.lost,
            "corrupt": self.corrupt,
            "failures": self.failures[:10],
        }


class Workspace:
    """An application, its agent and a file replica, with SIGKILL-able processes."""

    def __init__(self, root: Path, page_size: int = 4096, *, app_behaviour: bool = False) -> None:
        self.root = root
        # Ordinary application behaviour on top of the writes: its own checkpoints of every mode,
        # and a reader process holding read transactions open for 0.5-5 s.
        self.app_behaviour = app_behaviour
        self.reader: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.db = root / "app.db"
        self.replica = root / "replica"
        self.counter = root / "committed"
        self.config = root / "litestream.yml"
        self.port = free_port()
        self.agent: subprocess.Popen[bytes] | None = None
        self.app: subprocess.Popen[bytes] | None = None
        self.agent_log = open(root / "agent.log", "ab")  # closed in close()
        self.acked = 0
        self._pending: list[tuple[int, int]] = []  # (committed count C, txid that proves it)
        conn = sqlite3.connect(self.db, isolation_level=None)
        conn.execute(f"PRAGMA page_size = {page_size}")
        conn.execute("PRAGMA journal_mode = wal")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        conn.close()
        self.config.write_text(
            f"""addr: 127.0.0.1:{self.port}
levels:
  - interval: 1s
  - interval: 3s
snapshot:
  interval: 5s
  retention: 10s
l0-retention: 2s
l0-retention-check-interval: 1s
dbs:
  - path: {self.db}
    monitor-interval: 50ms
    checkpoint-interval: 1s
    min-checkpoint-page-count: 8
    truncate-page-n: 48
    replica:
      url: file://{self.replica}
"""
        )

    # ---- processes -------------------------------------------------------------------------

    def start_app(self) -> None:
        self.app = subprocess.Popen(
            [sys.executable, "-c", APP_SCRIPT, str(self.db), str(self.counter), "1" if self.app_behaviour else "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if self.app_behaviour and self.reader is None:
            self.reader = subprocess.Popen(
                [sys.executable, "-c", READER_SCRIPT, str(self.db)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )

    def kill_app(self) -> None:
        if self.app is not None:
            self._reap(self.app, "application")
            self.app = None

    def start_agent(self) -> None:
        self.agent_log.write(b"---- start ----\n")
        self.agent_log.flush()
        self.agent = subprocess.Popen(
            [*LIFEBOAT, "replicate", "-config", str(self.config)],
            stdout=self.agent_log,
            stderr=subprocess.STDOUT,
        )

    def kill_agent(self) -> None:
        if self.agent is not None:
            self._reap(self.agent, "agent")
            self.agent = None

    def stop_agent(self) -> None:
        """SIGTERM: the agent's final sync must ship everything committed before the signal."""
        if self.agent is None:
            return
        # Only a started agent has a final sync to make (one killed while importing has nothing).
        deadline = time.monotonic() + 30
        while self.status() is None:
            if time.monotonic() > deadline or self.agent.poll() is not None:
                raise CheckFailed(f"agent did not start:\n{self.agent_output()}")
            time.sleep(0.02)
        committed = self.committed()
        self.agent.send_signal(signal.SIGTERM)
        try:
            code = self.agent.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.agent.kill()
            self.agent.wait()
            raise CheckFailed(f"agent did not stop on SIGTERM:\n{self.agent_output()}") from None
        self.agent = None
        if code != 0:
            raise CheckFailed(f"agent exited {code} on SIGTERM:\n{self.agent_output()}")
        self.acked = max(self.acked, committed)

    def measure(self, stats: Stats) -> None:
        """The replica's file count and the WAL's size must stay bounded: record their maxima."""
        files = sum(1 for p in self.replica.rglob("*.ltx"))
        try:
            wal = self.db.with_name(self.db.name + "-wal").stat().st_size
        except FileNotFoundError:
            wal = 0
        stats.max_replica_files = max(stats.max_replica_files, files)
        stats.max_wal_bytes = max(stats.max_wal_bytes, wal)

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes], what: str) -> None:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise CheckFailed(f"{what} died on its own with code {proc.returncode}: {err[-2000:]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()  # reaped: the lease check sees a dead pid, not a zombie

    def close(self) -> None:
        for p in (self.app, self.agent, self.reader):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        self.app = self.agent = self.reader = None
        self.agent_log.close()

    def agent_output(self) -> str:
        self.agent_log.flush()
        return (self.root / "agent.log").read_text(errors="replace")[-4000:]

    # ---- observation -----------------------------------------------------------------------

    def committed(self) -> int:
        for _ in range(100):
            try:
                raw = self.counter.read_bytes()
            except FileNotFoundError:
                return 0
            if len(raw) == 16:
                a, b = struct.unpack("<QQ", raw)
                if a == b:
                    return int(a)
        return 0

    def status(self) -> dict[str, int] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status", timeout=1) as r:
                body = json.loads(r.read())
        except (OSError, ValueError):
            return None
        db = body["databases"][0]
        if db["txid"] is None or db["remote_txid"] is None:
            return None  # still opening: no position is known yet, so none can prove anything
        return {"txid": int(db["txid"]), "remote_txid": int(db["remote_txid"])}

    def observe(self) -> None:
        """One acknowledgement step (see the module docstring)."""
        c = self.committed()
        st = self.status()
        if st is None:
            return
        still = []
        for count, target in self._pending:
            if st["remote_txid"] >= target:
                self.acked = max(self.acked, count)
            else:
                still.append((count, target))
        self._pending = still[-200:]
        self._pending.append((c, st["txid"] + 2))

    # ---- verification ----------------------------------------------------------------------

    def verify_restores(self, stats: Stats, tag: str) -> None:
        """Restore with both tools (in parallel) and check each result."""
        outdir = self.root / "restored"
        shutil.rmtree(outdir, ignore_errors=True)
        outdir.mkdir()
        url = f"file://{self.replica}"
        outs = {"lifeboat": outdir / "lifeboat.db", "litestream": outdir / "litestream.db"}
        procs = {
            "lifeboat": subprocess.Popen(
                [*LIFEBOAT, "restore", "-o", str(outs["lifeboat"]), url],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ),
            "litestream": subprocess.Popen(
                [LITESTREAM, "restore", "-o", str(outs["litestream"]), url],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ),
        }
        acked = self.acked
        for tool, proc in procs.items():
            _out, err = proc.communicate(timeout=120)
            stats.restores += 1
            if proc.returncode != 0:
                if acked == 0 and b"no matching backup" in err:
                    continue  # killed before its first upload: nothing was acknowledged, nothing to restore
                self._fail(stats, f"{tag}: {tool} restore failed ({proc.returncode}): {err.decode()[-1500:]}")
                stats.corrupt += 1
                continue
            n = self._check_db(stats, tag, tool, outs[tool])
            if n is None:
                continue
            stats.rows_verified += n
            if n < acked:
                stats.lost += acked - n
                self._fail(stats, f"{tag}: {tool} restore has {n} rows but {acked} were acknowledged as replicated")
        stats.acked_max = max(stats.acked_max, acked)
        shutil.rmtree(outdir, ignore_errors=True)

    def _check_db(self, stats: Stats, tag: str, tool: str, path: Path) -> int | None:
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                check = conn.execute("PRAGMA integrity_check").fetchall()
                got = conn.execute("SELECT id, v FROM t ORDER BY id").fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            stats.corrupt += 1
            self._fail(stats, f"{tag}: {tool} restore unreadable: {exc}")
            return None
        if check != [("ok",)]:
            stats.corrupt += 1
            self._fail(stats, f"{tag}: {tool} restore integrity_check: {check[:3]}")
            return None
        for expect_id, (i, v) in enumerate(got, start=1):
            if i != expect_id or v != expected_value(i):
                stats.corrupt += 1
                self._fail(stats, f"{tag}: {tool} restore row {expect_id} is {i!r}: not a prefix of the app's rows")
                return None
        return len(got)

    def _fail(self, stats: Stats, msg: str) -> None:
        stats.failures.append(msg)
        keep = self.root.parent / f"failed-{self.root.name}-{len(stats.failures)}"
        with contextlib.suppress(OSError):
            shutil.copytree(self.root, keep, ignore=shutil.ignore_patterns("restored"))


def run_cycles(
    root: Path,
    cycles: int | None = None,
    *,
    seconds: float | None = None,
    run_time: tuple[float, float] = (0.3, 1.6),
    app_kill_probability: float = 0.35,
    fresh_every: int = 0,
    seed: int | None = None,
    on_cycle: object = None,
    app_behaviour: bool = False,
    graceful_probability: float = 0.0,
) -> Stats:
    """SIGKILL the agent (and sometimes the application) at random moments; verify after each kill.

    Stops after `cycles` cycles or `seconds` of wall time, whichever is given/first. With
    `fresh_every`, a new workspace replaces the old one every that many cycles (keeps restores small
    in a long soak). `app_behaviour` adds application checkpoints and a long reader (see
    `Workspace`); `graceful_probability` ends that share of cycles with SIGTERM instead of SIGKILL,
    after which every row committed before the signal must be in the replica.
    """
    rng = random.Random(seed)
    stats = Stats()
    deadline = None if seconds is None else time.monotonic() + seconds
    ws_no = 0
    ws = Workspace(root / f"ws{ws_no}", app_behaviour=app_behaviour)
    ws.start_app()
    try:
        while True:
            if cycles is not None and stats.cycles >= cycles:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            if fresh_every and stats.cycles and stats.cycles % fresh_every == 0:
                stats.rows_committed += ws.committed()
                ws.close()
                shutil.rmtree(ws.root, ignore_errors=True)
                ws_no += 1
                ws = Workspace(root / f"ws{ws_no}", app_behaviour=app_behaviour)
                ws.start_app()
            ws.start_agent()
            started = time.monotonic()
            until = started + rng.uniform(*run_time)
            app_kill_at = started + rng.uniform(0.05, until - started) if rng.random() < app_kill_probability else None
            while time.monotonic() < until:
                if ws.agent is not None and ws.agent.poll() is not None:
                    raise CheckFailed(f"agent exited on its own ({ws.agent.returncode}):\n{ws.agent_output()}")
                if app_kill_at is not None and time.monotonic() >= app_kill_at:
                    ws.kill_app()
                    stats.app_kills += 1
                    ws.start_app()
                    app_kill_at = None
                ws.observe()
                time.sleep(rng.uniform(0.01, 0.06))
            ws.measure(stats)
            if rng.random() < graceful_probability:
                ws.stop_agent()
                stats.agent_stops += 1
            else:
                ws.kill_agent()
                stats.agent_kills += 1
            stats.cycles += 1
            ws.verify_restores(stats, f"{ws.root.name} cycle {stats.cycles}")
            if callable(on_cycle):
                on_cycle(stats)
        stats.rows_committed += ws.committed()
    finally:
        ws.close()
    return stats
