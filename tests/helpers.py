"""Shared helpers for the compat and e2e suites: app-writer processes, running the CLIs, comparing databases.

Everything runs as real processes: `lifeboat` through `sys.executable -m lifeboat.agent.cli`, the
real `litestream` 0.5.17 binary from the virtualenv, and the application as a separate Python
process that writes with its own connection.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LIFEBOAT = [sys.executable, "-m", "lifeboat.agent.cli"]
_VENV_BIN = Path(sys.executable).parent
LITESTREAM = str(_VENV_BIN / "litestream") if (_VENV_BIN / "litestream").exists() else shutil.which("litestream")
CLI_TIMEOUT = 60.0

# The application: one process inserting batches of rows, one transaction per batch.
WRITER_SCRIPT = r"""
import sqlite3, sys, time, os
db, first, batches, rows, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
conn = sqlite3.connect(db, timeout=30, isolation_level=None)
conn.execute("PRAGMA busy_timeout = 30000")
for b in range(first, first + batches):
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO t (batch, v) VALUES (?, ?)",
        [(b, os.urandom(150).hex()) for _ in range(rows)],
    )
    conn.execute("COMMIT")
    time.sleep(pause)
conn.close()
"""


def run(cmd: Sequence[str], *, timeout: float = CLI_TIMEOUT, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing text output."""
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)


def lifeboat(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return run([*LIFEBOAT, *args], timeout=timeout)


def litestream(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    assert LITESTREAM, "the litestream binary is not installed"
    return run([LITESTREAM, *args], timeout=timeout)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Assert success, showing the output when not."""
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc


def create_db(path: Path, page_size: int = 4096) -> None:
    """An application database in WAL mode with table t(id, batch, v), page size set first."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA page_size = {page_size}")
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, batch INTEGER NOT NULL, v TEXT NOT NULL)")
    conn.close()
    assert page_size_of(path) == page_size


def page_size_of(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(100)
    raw = int.from_bytes(head[16:18], "big")
    return 65536 if raw == 1 else raw


def file_page_count(path: Path) -> int:
    """Pages in the database *file* (header bytes 28..32), ignoring the WAL: grows only on checkpoint."""
    with open(path, "rb") as f:
        head = f.read(100)
    return int.from_bytes(head[28:32], "big")


def write_batch(path: Path, batch: int, rows: int = 20) -> None:
    """One batch from this (test) process: a separate connection from the agent's."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO t (batch, v) VALUES (?, ?)", [(batch, os.urandom(100).hex()) for _ in range(rows)])
    conn.execute("COMMIT")
    conn.close()


def start_writer(path: Path, first: int, batches: int, rows: int = 20, pause: float = 0.01) -> subprocess.Popen[str]:
    """The application as its own process."""
    return subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(path), str(first), str(batches), str(rows), str(pause)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_writer(proc: subprocess.Popen[str], timeout: float = 120) -> None:
    _out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"writer failed ({proc.returncode}): {err}"


def rows(path: Path, table: str = "t") -> list[tuple[Any, ...]]:
    """Every row of `table`, ordered; read-only so a restored file is never modified."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
    finally:
        conn.close()


def batches(path: Path) -> set[int]:
    return {r[1] for r in rows(path)}


def integrity(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return "; ".join(r[0] for r in conn.execute("PRAGMA integrity_check").fetchall())
    finally:
        conn.close()


def assert_same_db(restored: Path, source: Path) -> None:
    """Same rows in t, and the restored file passes integrity_check."""
    assert integrity(restored) == "ok"
    got, want = rows(restored), rows(source)
    assert len(got) == len(want), f"{restored}: {len(got)} rows, source has {len(want)}"
    assert got == want


def file_url(path: Path) -> str:
    return f"file://{Path(path).absolute()}"


def ltx_listing(url: str, level: str = "0") -> list[dict[str, Any]]:
    """`lifeboat ltx -json URL`."""
    proc = ok(lifeboat("ltx", "-json", "-level", level, url))
    return json.loads(proc.stdout)


def max_txid(url: str) -> int:
    files = ltx_listing(url)
    return max((int(f["max_txid"], 16) for f in files), default=0)


async def until(pred: Any, timeout: float = 60.0, interval: float = 0.02) -> None:
    """Wait on the running event loop until `pred()` is true; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(interval)


def wait_for(pred: Any, timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def l0_txids(replica_dir: Path) -> list[int]:
    """TXIDs of the L0 files in a file replica, read straight from the directory (cheap to poll)."""
    d = Path(replica_dir) / "ltx" / "0"
    if not d.is_dir():
        return []
    return sorted(int(n[17:33], 16) for n in os.listdir(d) if n.endswith(".ltx") and len(n) == 37)


def write_config(path: Path, db: Path, replica: Path, **db_opts: Any) -> Path:
    """A litestream.yml with one database and one file replica (both tools read it)."""
    lines = ["dbs:", f"  - path: {db}"]
    lines += [f"    {k}: {v}" for k, v in db_opts.items()]
    lines += ["    replica:", f"      url: {file_url(replica)}"]
    path.write_text("\n".join(lines) + "\n")
    return path


class Agent:
    """A running `replicate` process (lifeboat or litestream); stop() sends SIGTERM."""

    def __init__(self, cmd: Sequence[str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "w")  # closed in stop()
        self.proc = subprocess.Popen(list(cmd), stdout=self._log, stderr=subprocess.STDOUT, text=True)

    @classmethod
    def lifeboat(cls, *args: str, log: Path) -> Agent:
        return cls([*LIFEBOAT, "replicate", *args], log)

    @classmethod
    def litestream(cls, *args: str, log: Path) -> Agent:
        assert LITESTREAM
        return cls([LITESTREAM, "replicate", *args], log)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"replicate did not stop on SIGTERM:\n{self.output()}") from None
        finally:
            self._log.close()
        return code

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self._log.closed:
            self._log.close()


def wait_replica_started(agent: Agent, replica: Path, timeout: float = 30) -> None:
    """Until the replica holds its first L0 file (the initial snapshot)."""

    def started() -> bool:
        assert agent.alive(), f"replicate exited early ({agent.proc.returncode}):\n{agent.output()}"
        return bool(l0_txids(replica))

    wait_for(started, timeout, what=f"first L0 file in {replica}")


def rfc3339_ms(ts: datetime) -> str:
    """RFC3339 with milliseconds, UTC."""
    ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr


def file_replicated_specs(tmp_path: Path, n: int, **options: Any) -> list[Any]:
    """`n` small databases in `tmp_path` (two rows each), each with a file replica of its own, as
    `DatabaseSpec`s with `options`."""
    from lifeboat.agent.storage import new_client
    from lifeboat.agent.store import DatabaseSpec

    specs = []
    for i in range(n):
        db = tmp_path / f"db{i}.db"
        create_db(db)
        write_batch(db, i, rows=2)
        client = new_client({"url": f"file://{tmp_path / 'replica' / str(i)}"})
        specs.append(DatabaseSpec(str(db), client, **options))
    return specs
