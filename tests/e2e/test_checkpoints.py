"""Checkpoints and WAL continuity as an ordinary application meets them: a long reader that blocks
checkpoints, a writer that holds the write lock past busy-timeout, and an agent restart after SQLite
removed the WAL. Counted in replica files and WAL bytes, not only in the final rows."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from helpers import (
    Agent,
    assert_same_db,
    create_db,
    file_url,
    l0_txids,
    lifeboat,
    litestream,
    ok,
    wait_for,
    wait_replica_started,
    write_batch,
    write_config,
)
from test_observability import free_port, scrape, value

FRAME = 24 + 4096
# One write_batch (20 rows of 200 characters) commits a handful of pages: a generous bound per batch.
FRAMES_PER_BATCH = 8


def _conn(db: Path, busy_ms: int = 30000) -> sqlite3.Connection:
    conn = sqlite3.connect(db, timeout=busy_ms / 1000, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    return conn


def _meta_l0(db: Path) -> list[str]:
    d = db.parent / f".{db.name}-litestream" / "ltx" / "0"
    return sorted(n for n in os.listdir(d) if n.endswith(".ltx"))


def _wal_size(db: Path) -> int:
    try:
        return os.path.getsize(f"{db}-wal")
    except FileNotFoundError:
        return 0


def _quiet(db: Path, replica: Path) -> tuple[list[str], list[int], int]:
    """Local L0 files, replica L0 TXIDs and the WAL size, once the agent has shipped what is local."""

    def settled() -> tuple[list[str], list[int], int] | None:
        local = _meta_l0(db)
        remote = l0_txids(replica)
        if not remote or int(local[-1][17:33], 16) != remote[-1]:
            return None
        return local, remote, _wal_size(db)

    first = wait_for(settled, 30, 0.1, what="the replica to hold every local L0 file")
    time.sleep(0.5)  # a few monitor intervals: anything the agent still does shows up as a change
    return wait_for(settled, 30, 0.1, what="the replica to hold every local L0 file") or first


def _restore_both(tmp: Path, replica: Path, db: Path) -> None:
    for tool in (lifeboat, litestream):
        out = tmp / f"restored-{tool.__name__}.db"
        for p in tmp.glob(f"{out.name}*"):
            p.unlink()
        ok(tool("restore", "-o", str(out), file_url(replica)))
        assert_same_db(out, db)


def test_long_reader_writes_no_replica_files_when_idle(tmp_path: Path) -> None:
    """A reader holds a snapshot for seconds: checkpoints are blocked, and said to be so once. With
    nothing committed no L0 file appears and the WAL does not grow; with commits, one L0 per sync
    at most and the WAL grows by the application's frames only."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    create_db(db)
    port = free_port()
    cfg = tmp_path / "lifeboat.yml"
    cfg.write_text(
        f"addr: 127.0.0.1:{port}\n"
        f"dbs:\n  - path: {db}\n    monitor-interval: 50ms\n    min-checkpoint-page-count: 4\n"
        f"    checkpoint-interval: 1s\n    replica:\n      url: {file_url(replica)}\n"
    )
    with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log") as agent:
        wait_replica_started(agent, replica)
        for b in range(1, 4):
            write_batch(db, b)
        _quiet(db, replica)

        reader = _conn(db)
        reader.execute("BEGIN")
        held = reader.execute("SELECT COUNT(*) FROM t").fetchone()[0]
        for b in range(4, 7):  # commits past the reader's snapshot: a checkpoint cannot copy them
            write_batch(db, b)

        local, remote, wal = _quiet(db, replica)
        time.sleep(3)  # idle, the reader still open
        local2, remote2, wal2 = _quiet(db, replica)
        assert agent.alive(), agent.output()
        assert (len(local2), len(remote2)) == (len(local), len(remote)), (
            f"{len(local2) - len(local)} local and {len(remote2) - len(remote)} replica L0 files written "
            "with nothing committed"
        )
        assert wal2 == wal, f"the WAL grew by {wal2 - wal} bytes with nothing committed"

        # The application writes while the reader stays open.
        writes = 10
        for b in range(10, 10 + writes):
            write_batch(db, b)
            time.sleep(0.1)
        _, remote3, wal3 = _quiet(db, replica)
        assert 1 <= len(remote3) - len(remote2) <= writes, (len(remote2), len(remote3))
        assert wal3 - wal2 <= writes * FRAMES_PER_BATCH * FRAME, f"the WAL grew by {wal3 - wal2} bytes"

        assert reader.execute("SELECT COUNT(*) FROM t").fetchone()[0] == held
        _, samples = scrape(port)
        assert value(samples, "lifeboat_checkpoint_blocked_seconds", db=str(db)) > 0
        out = agent.output()
        assert out.count("blocking checkpoints") == 1, out
        reader.execute("COMMIT")
        reader.close()

        write_batch(db, 30)
        wait_for(lambda: "checkpoints no longer blocked" in agent.output(), 30, 0.1, what="the all-clear")
        _, samples = scrape(port)
        assert value(samples, "lifeboat_checkpoint_blocked_seconds", db=str(db)) == 0
        _quiet(db, replica)
        assert agent.stop() == 0, agent.output()
    _restore_both(tmp_path, replica, db)


def _big_db(db: Path, mb: int) -> None:
    create_db(db)
    conn = _conn(db)
    for _ in range(mb):
        conn.executemany("INSERT INTO t (batch, v) VALUES (0, ?)", [(os.urandom(512).hex(),) for _ in range(1024)])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _l0_bytes_above(replica: Path, txid: int) -> int:
    d = replica / "ltx" / "0"
    return sum(os.path.getsize(d / n) for n in os.listdir(d) if n.endswith(".ltx") and int(n[17:33], 16) > txid)


def test_restart_after_wal_removed_ships_only_changes(tmp_path: Path) -> None:
    """The agent was the last connection: SQLite checkpointed and removed the WAL on close. The next
    start proves the database file is the replicated state and ships only what changed since, both
    with nothing written meanwhile and with an application that wrote while the agent was down."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    _big_db(db, 4)
    size = os.path.getsize(db)
    cfg = write_config(tmp_path / "lifeboat.yml", db, replica, **{"monitor-interval": "50ms"})
    with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent1.log") as agent:
        wait_replica_started(agent, replica)
        write_batch(db, 1)
        _quiet(db, replica)
        assert agent.stop() == 0, agent.output()
    assert _wal_size(db) == 0, "the agent was the last connection: SQLite should have removed the WAL"

    for run, app_writes_meanwhile in enumerate((False, True), start=2):
        last = l0_txids(replica)[-1]
        app = None
        if app_writes_meanwhile:
            app = _conn(db)  # stays open: its WAL (new generation, on top of the file) survives
            app.execute("INSERT INTO t (batch, v) VALUES (50, 'written while the agent was down')")
        with Agent.lifeboat("-config", str(cfg), log=tmp_path / f"agent{run}.log") as agent:
            # Once the agent has opened the database: a write before that, by a last connection,
            # checkpoints into the file and rightly forces a snapshot.
            wait_for(lambda: "replicating" in agent.output(), 30, 0.05, what="the agent to open the database")
            write_batch(db, run * 100)
            wait_for(lambda last=last: l0_txids(replica)[-1] > last, 30, 0.05, what="the new commit in the replica")
            _quiet(db, replica)
            assert "snapshot" not in agent.output(), agent.output()
            assert agent.stop() == 0, agent.output()
        if app is not None:
            app.close()
        shipped = _l0_bytes_above(replica, last)
        assert shipped < size // 20, f"restart {run} shipped {shipped} bytes of L0 files for a {size}-byte database"
        _restore_both(tmp_path, replica, db)


def test_checkpoint_failure_does_not_hold_back_uploads(tmp_path: Path) -> None:
    """An application holds the write lock past busy-timeout: the checkpoint fails and says so, yet
    the L0 files the sync wrote ship, in the loop and in the final sync on SIGTERM."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    create_db(db)
    cfg = write_config(
        tmp_path / "lifeboat.yml", db, replica,
        **{"monitor-interval": "50ms", "min-checkpoint-page-count": 1, "busy-timeout": "100ms"},
    )
    holder = _conn(db)
    with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log") as agent:
        wait_replica_started(agent, replica)
        _quiet(db, replica)

        # In the loop: commit, then keep the write lock until the replica has the commit.
        before = l0_txids(replica)[-1]
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO t (batch, v) VALUES (1, 'x')")
        holder.execute("COMMIT")
        holder.execute("BEGIN IMMEDIATE")
        wait_for(lambda: "checkpoint" in agent.output() and "failed" in agent.output(), 30, 0.05,
                 what="a failed checkpoint")
        wait_for(lambda: l0_txids(replica)[-1] > before, 30, 0.05, what="the commit shipped while the lock is held")
        holder.execute("ROLLBACK")
        _quiet(db, replica)

        # On SIGTERM: the final sync ships the last commit although its checkpoint fails.
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO t (batch, v) VALUES (2, 'y')")
        holder.execute("COMMIT")
        holder.execute("BEGIN IMMEDIATE")
        assert agent.stop() == 0, agent.output()
        holder.execute("ROLLBACK")
        out = agent.output()
    holder.close()
    assert "sync failed" not in out, out
    assert "checkpoint" in out and "failed" in out, out
    _restore_both(tmp_path, replica, db)
