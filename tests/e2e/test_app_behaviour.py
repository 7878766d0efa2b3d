"""Things applications do to their database while the agent replicates it.

Each either replicates correctly (both `lifeboat restore` and `litestream restore` of the final
replica equal the source) or stops with a clear error; never a silently broken chain.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    Agent,
    assert_same_db,
    create_db,
    file_url,
    lifeboat,
    litestream,
    ok,
    rows,
    wait_for,
    wait_replica_started,
    write_batch,
)


def _config(tmp: Path, db: Path, replica: Path) -> Path:
    cfg = tmp / "litestream.yml"
    cfg.write_text(
        f"dbs:\n  - path: {db}\n    monitor-interval: 50ms\n    min-checkpoint-page-count: 4\n"
        f"    checkpoint-interval: 1s\n    replica:\n      url: {file_url(replica)}\n"
    )
    return cfg


def _caught_up(db: Path, replica: Path, agent: Agent) -> None:
    """Wait until the replica restores to the source's current rows."""
    want = rows(db)
    n = [0]

    def same() -> bool:
        assert agent.alive(), agent.output()
        n[0] += 1
        out = replica.parent / f"probe{n[0]}.db"
        proc = lifeboat("restore", "-o", str(out), file_url(replica))
        good = proc.returncode == 0 and rows(out) == want
        for p in replica.parent.glob(f"probe{n[0]}.db*"):
            p.unlink()
        return good

    wait_for(same, 30, 0.2, what="replica to catch up")


def _check_final(tmp: Path, db: Path, replica: Path) -> None:
    for tool in (lifeboat, litestream):
        out = tmp / f"final-{tool.__name__}.db"
        ok(tool("restore", "-o", str(out), file_url(replica)))
        assert_same_db(out, db)


def _app(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def _checkpoint_truncate(db: Path) -> None:
    conn = _app(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    conn.close()


def _checkpoint_restart(db: Path) -> None:
    conn = _app(db)
    conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
    conn.close()


def _vacuum(db: Path) -> None:
    conn = _app(db)
    conn.execute("DELETE FROM t WHERE id % 3 = 0")
    conn.execute("VACUUM")
    conn.close()


def _journal_mode_flip(db: Path) -> None:
    """Switching away from WAL needs exclusive access: while the agent follows the database SQLite
    refuses it ("database is locked"), so the database stays in WAL mode and the chain unbroken."""
    conn = _app(db)
    conn.execute("PRAGMA busy_timeout = 200")
    try:
        mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        mode = "wal"
    assert mode == "wal", f"journal mode switched to {mode} under a running agent"
    write_batch(db, 500)
    assert conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    conn.close()


BEHAVIOURS: dict[str, Callable[[Path], None]] = {
    "wal_checkpoint_truncate": _checkpoint_truncate,
    "wal_checkpoint_restart": _checkpoint_restart,
    "vacuum": _vacuum,
    "journal_mode_delete_and_back": _journal_mode_flip,
}


@pytest.mark.parametrize("behaviour", list(BEHAVIOURS))
def test_app_behaviour_replicates_correctly(tmp_path: Path, behaviour: str) -> None:
    db = tmp_path / "app.db"
    replica = tmp_path / "replica"
    create_db(db)
    cfg = _config(tmp_path, db, replica)
    with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log") as agent:
        wait_replica_started(agent, replica)
        for b in range(1, 6):
            write_batch(db, b)
        _caught_up(db, replica, agent)
        BEHAVIOURS[behaviour](db)
        for b in range(6, 12):
            write_batch(db, b)
        BEHAVIOURS[behaviour](db)
        write_batch(db, 12)
        _caught_up(db, replica, agent)
        assert agent.stop() == 0, agent.output()
    _check_final(tmp_path, db, replica)


@pytest.mark.parametrize("page_size", [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536])
def test_page_sizes(tmp_path: Path, page_size: int) -> None:
    db = tmp_path / "app.db"
    replica = tmp_path / "replica"
    create_db(db, page_size)
    cfg = _config(tmp_path, db, replica)
    with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log") as agent:
        wait_replica_started(agent, replica)
        for b in range(1, 8):
            write_batch(db, b, rows=30)
        conn = _app(db)
        conn.execute("UPDATE t SET v = v || 'x' WHERE id % 2 = 0")  # rewrite pages, not only append
        conn.close()
        _caught_up(db, replica, agent)
        assert agent.stop() == 0, agent.output()
    _check_final(tmp_path, db, replica)


def test_long_read_transactions(tmp_path: Path) -> None:
    """A reader that keeps a snapshot open for seconds while the app writes and the agent checkpoints."""
    db = tmp_path / "app.db"
    replica = tmp_path / "replica"
    create_db(db)
    cfg = _config(tmp_path, db, replica)
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                conn = _app(db)
                conn.execute("BEGIN")
                n = conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]
                t_end = time.monotonic() + 1.5
                while time.monotonic() < t_end and not stop.is_set():
                    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == n  # a stable snapshot
                    time.sleep(0.05)
                conn.execute("COMMIT")
                conn.close()
        except BaseException as exc:
            errors.append(exc)

    with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log") as agent:
        wait_replica_started(agent, replica)
        th = threading.Thread(target=reader)
        th.start()
        try:
            for b in range(1, 40):
                write_batch(db, b)
                time.sleep(0.05)
        finally:
            stop.set()
            th.join()
        assert not errors, errors
        _caught_up(db, replica, agent)
        assert agent.stop() == 0, agent.output()
    _check_final(tmp_path, db, replica)


def test_database_replaced_underneath(tmp_path: Path) -> None:
    """Someone restores a different database over the path (rename: a new inode): the running agent
    must notice within a monitor interval and ship a snapshot of the new file, so the replica equals
    the database now at the path; it must never keep shipping the old, unlinked file. A restarted
    agent then carries on from there."""
    db = tmp_path / "app.db"
    replica = tmp_path / "replica"
    create_db(db)
    cfg = _config(tmp_path, db, replica)
    other = tmp_path / "other.db"
    create_db(other)
    for b in range(100, 104):
        write_batch(other, b)
    with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log") as agent:
        wait_replica_started(agent, replica)
        for b in range(1, 4):
            write_batch(db, b)
        _caught_up(db, replica, agent)
        # Replace the file (new inode), as a restore by another tool does; its WAL goes too.
        for suffix in ("-wal", "-shm"):
            if os.path.exists(f"{db}{suffix}"):
                os.unlink(f"{db}{suffix}")
        tmp_copy = tmp_path / "incoming.db"
        shutil.copy(other, tmp_copy)
        os.replace(tmp_copy, db)
        write_batch(db, 200)
        # The running agent notices the new file within a monitor interval and ships a snapshot of
        # it: the replica now restores to the new database, old rows gone, new ones there.
        _caught_up(db, replica, agent)
        assert "replaced" in agent.output(), agent.output()
        write_batch(db, 201)
        _caught_up(db, replica, agent)
        assert agent.stop() == 0, agent.output()
    # After a restart the agent must converge on the database now at the path.
    with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent2.log") as agent:
        _caught_up(db, replica, agent)
        write_batch(db, 202)
        _caught_up(db, replica, agent)
        assert agent.stop() == 0, agent.output()
    _check_final(tmp_path, db, replica)
    assert {r[1] for r in rows(db)} >= {100, 200, 201, 202}
