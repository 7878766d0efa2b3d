"""`restore -f`: a follower keeps a restored database up to date while the source is written.

The replica is written by `lifeboat replicate` or the real `litestream replicate`, on a directory
and on S3 (moto). A reader process-side thread keeps one read-only connection open and checks,
in each read transaction, `PRAGMA integrity_check`, that the row count never goes down and that
every batch it sees is whole (a half-applied TXID would show as a partial batch or a corrupt tree).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sqlite3
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    LIFEBOAT,
    Agent,
    batches,
    create_db,
    file_url,
    l0_txids,
    lifeboat,
    max_txid,
    no_traceback,
    start_writer,
    wait_for,
    wait_replica_started,
    wait_writer,
)

ROWS = 20  # per batch: a reader seeing a count that is not a multiple saw half a transaction
TOOLS = ["lifeboat", "litestream"]


class Reader(threading.Thread):
    """Reads the follower's output continuously through one read-only connection."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.halt = threading.Event()
        self.errors: list[str] = []
        self.counts: list[int] = []

    def run(self) -> None:
        wait_for(self.path.exists, 60, what=f"{self.path}")
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=60, isolation_level=None)
        try:
            while not self.halt.is_set():
                try:
                    conn.execute("BEGIN")
                    check = conn.execute("PRAGMA integrity_check").fetchall()
                    count = conn.execute("SELECT count(*) FROM t").fetchone()[0]
                    partial = conn.execute(
                        "SELECT batch FROM t GROUP BY batch HAVING count(*) != ?", (ROWS,)
                    ).fetchall()
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    self.errors.append(f"read failed: {exc}")
                    continue
                if check != [("ok",)]:
                    self.errors.append(f"integrity_check: {check[:3]}")
                if partial:
                    self.errors.append(f"partial batches {partial[:3]} at count {count}")
                if self.counts and count < self.counts[-1]:
                    self.errors.append(f"row count went down: {self.counts[-1]} -> {count}")
                self.counts.append(count)
                time.sleep(0.005)
        finally:
            conn.close()

    def finish(self, states: int = 3) -> None:
        """Stop; no read saw a broken state, and the reads saw at least `states` different ones."""
        self.halt.set()
        self.join(60)
        assert not self.errors, self.errors[:5]
        assert len(set(self.counts)) >= states, f"the reader saw too few states: {sorted(set(self.counts))}"


def follower(out: Path, source: str, log: Path, *extra: str) -> Agent:
    """`lifeboat restore -f` polling every 100 ms, as a process of its own."""
    return Agent([*LIFEBOAT, "restore", "-f", "-follow-interval", "100ms", "-o", str(out), *extra, source], log)


def replicate(tool: str, *args: str, log: Path) -> Agent:
    return Agent.lifeboat(*args, log=log) if tool == "lifeboat" else Agent.litestream(*args, log=log)


def wait_caught_up(out: Path, source: Path, agent: Agent, timeout: float = 90) -> None:
    want = batches(source)

    def caught_up() -> bool:
        assert agent.alive(), f"the follower exited ({agent.proc.returncode}):\n{agent.output()}"
        return out.exists() and batches(out) == want

    wait_for(caught_up, timeout, interval=0.2, what=f"{out} to hold batches 1..{max(want)}")


def stop_follower(agent: Agent) -> str:
    code = agent.stop()
    log = agent.output()
    assert code == 0, f"the follower exited {code} on SIGTERM:\n{log}"
    no_traceback(log)
    return log


def follow_while_writing(tmp_path: Path, db: Path, source: str, *extra: str) -> str:
    """Follow `source` while a writer commits 40 batches to `db`; returns the follower's log."""
    out = tmp_path / "follower.db"
    with follower(out, source, tmp_path / "follow.log", *extra) as agent:
        wait_for(Path(f"{out}-txid").exists, 60, what="the initial restore")
        reader = Reader(out)
        reader.start()
        wait_writer(start_writer(db, 1, 40, rows=ROWS, pause=0.1))
        wait_caught_up(out, db, agent)
        reader.finish()
        log = stop_follower(agent)
    assert "lag=" in log
    return log


@pytest.mark.parametrize("tool", TOOLS)
def test_follow_directory_replica(tool: str, tmp_path: Path) -> None:
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    url = file_url(replica)
    create_db(db)
    with replicate(tool, str(db), url, log=tmp_path / "replicate.log") as agent:
        wait_replica_started(agent, replica)
        follow_while_writing(tmp_path, db, url)
        assert agent.stop() == 0
    out = tmp_path / "follower.db"
    txid_file = Path(f"{out}-txid").read_text()
    assert txid_file == f"{max_txid(url):016x}\n"
    assert not Path(f"{out}-journal").exists()


def test_follow_flags_refused(tmp_path: Path) -> None:
    url = file_url(tmp_path / "replica")
    for flags in (["-txid", "0000000000000001"], ["-timestamp", "2026-01-01T00:00:00Z"], ["-dry-run"]):
        proc = lifeboat("restore", "-f", "-o", str(tmp_path / "x.db"), *flags, url)
        assert proc.returncode == 1 and "follow mode" in proc.stderr, proc.stderr
        no_traceback(proc.stderr)
    proc = lifeboat("restore", "-f", "-follow-interval", "soon", "-o", str(tmp_path / "x.db"), url)
    assert proc.returncode == 1 and "-follow-interval" in proc.stderr, proc.stderr


def test_resume_after_sigkill(tmp_path: Path) -> None:
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    url = file_url(replica)
    out = tmp_path / "follower.db"
    create_db(db)
    with Agent.lifeboat(str(db), url, log=tmp_path / "replicate.log") as agent:
        wait_replica_started(agent, replica)
        writer = start_writer(db, 1, 60, rows=ROWS, pause=0.02)
        with follower(out, url, tmp_path / "follow1.log") as first:
            wait_for(lambda: out.exists() and len(batches(out)) > 5, 60, interval=0.1, what="a few batches")
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait()
        inode = out.stat().st_ino
        wait_writer(writer)
        with follower(out, url, tmp_path / "follow2.log") as second:
            reader = Reader(out)
            reader.start()
            wait_caught_up(out, db, second)
            # The writer is done: the resumed follower applies the backlog's consecutive files as
            # one transaction, so the reader sees the state before and the state after.
            reader.finish(states=2)
            log = stop_follower(second)
        assert agent.stop() == 0
    assert "resuming follow mode" in log
    assert out.stat().st_ino == inode, "the output was restored again instead of resumed"
    assert Path(f"{out}-txid").read_text() == f"{max_txid(url):016x}\n"


def test_resume_refused_without_txid_file(tmp_path: Path) -> None:
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    url = file_url(replica)
    create_db(db)
    with Agent.lifeboat(str(db), url, log=tmp_path / "replicate.log") as agent:
        wait_replica_started(agent, replica)
        assert agent.stop() == 0
    out = tmp_path / "other.db"
    create_db(out)
    proc = lifeboat("restore", "-f", "-o", str(out), url)
    assert proc.returncode == 1 and f"{out}-txid" in proc.stderr, proc.stderr
    no_traceback(proc.stderr)


COMPACTING = """\
levels: [{{interval: 1s}}]
l0-retention: 1s
l0-retention-check-interval: 1s
dbs: [{{path: {db}, replica: {{url: {url}}}}}]
"""


def test_gap_filled_from_compacted_level(tmp_path: Path) -> None:
    """L0 files compacted into L1 and removed while the follower was stopped: it resumes from L1."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    url = file_url(replica)
    out = tmp_path / "follower.db"
    cfg = tmp_path / "lifeboat.yml"
    create_db(db)
    cfg.write_text(COMPACTING.format(db=db, url=url))
    with Agent.lifeboat("-config", str(cfg), log=tmp_path / "replicate.log") as agent:
        wait_replica_started(agent, replica)
        wait_writer(start_writer(db, 1, 5, rows=ROWS))
        with follower(out, url, tmp_path / "follow1.log") as first:
            wait_caught_up(out, db, first)
            stop_follower(first)
        stopped_at = int(Path(f"{out}-txid").read_text(), 16)
        wait_writer(start_writer(db, 6, 20, rows=ROWS))
        wait_for(lambda: min(l0_txids(replica)) > stopped_at + 1, 60, interval=0.2, what="L0 files compacted away")
        with follower(out, url, tmp_path / "follow2.log") as second:
            wait_caught_up(out, db, second)
            log = stop_follower(second)
        assert agent.stop() == 0
    assert "resuming follow mode" in log


# ---- S3 (moto) -------------------------------------------------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "storage"))  # `replica_helpers`, for the conftest too
from replica_helpers import SFTPServer, new_db_config, remote, replica_block  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "lifeboat_storage_conftest", Path(__file__).resolve().parents[1] / "storage" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_sc = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
if not hasattr(_sc, "servers"):
    _spec.loader.exec_module(_sc)
servers = _sc.servers  # the session fixture, registered in this module


@pytest.fixture
def s3_block(servers: SFTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A fresh S3 replica block (litestream fails with AWS_CA_BUNDLE set; credentials from the env)."""
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    return replica_block("s3", f"follow-{uuid.uuid4().hex[:12]}", servers=servers, tmp_path=tmp_path)


@pytest.mark.parametrize("tool", TOOLS)
def test_follow_s3_replica(tool: str, tmp_path: Path, s3_block: dict[str, Any]) -> None:
    db, cfg = new_db_config(tmp_path, s3_block)
    with replicate(tool, "-config", str(cfg), log=tmp_path / "replicate.log") as agent:

        async def started() -> bool:
            async with remote(s3_block) as client:
                return bool(await client.ltx_files(0))

        wait_for(lambda: asyncio.run(started()), 60, interval=0.3, what="the first L0 file on S3")
        follow_while_writing(tmp_path, db, str(db), "-config", str(cfg))
        assert agent.stop() == 0
    assert os.path.exists(tmp_path / "follower.db-txid")

