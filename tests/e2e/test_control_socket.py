"""The control socket (`socket:`) driven by the real `litestream` CLI and by `lifeboat`'s own commands.

Both clients speak to the same agent: the shapes of requests and responses are Litestream's, so
either CLI (and any tool written against Litestream's socket) drives a lifeboat agent.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    Agent,
    create_db,
    file_url,
    l0_txids,
    lifeboat,
    litestream,
    ok,
    rows,
    wait_for,
    wait_replica_started,
    write_batch,
)

CLIENTS = {"litestream": litestream, "lifeboat": lifeboat}


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # A Unix socket path is limited to 107 bytes: pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="lbsock", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _agent(tmp_path: Path, sock: Path, permissions: str = "0640") -> tuple[Agent, Path, Path]:
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    create_db(db)
    cfg = tmp_path / "lifeboat.yml"
    cfg.write_text(
        f"socket:\n  enabled: true\n  path: {sock}\n  permissions: {permissions}\n"
        f"dbs:\n  - path: {db}\n    replica:\n      url: {file_url(replica)}\n"
    )
    agent = Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log")
    wait_replica_started(agent, replica)
    wait_for(sock.exists, 30, what="control socket")
    return agent, db, replica


def _json(proc: object) -> dict:
    return json.loads(ok(proc).stdout)  # type: ignore[arg-type]


def test_socket_has_the_configured_permissions_and_is_removed_on_exit(tmp_path: Path, sock_dir: Path) -> None:
    sock = sock_dir / "ctl.sock"
    agent, _db, _replica = _agent(tmp_path, sock, permissions="0640")
    with agent:
        st = os.stat(sock)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert agent.stop() == 0, agent.output()
    assert not sock.exists()


@pytest.mark.parametrize("cli", sorted(CLIENTS))
def test_info_and_list(tmp_path: Path, sock_dir: Path, cli: str) -> None:
    sock = sock_dir / "ctl.sock"
    run = CLIENTS[cli]
    agent, db, _replica = _agent(tmp_path, sock)
    with agent:
        info = _json(run("info", "-socket", str(sock), "-json"))
        assert info["pid"] == agent.proc.pid
        assert info["database_count"] == 1
        assert info["uptime_seconds"] >= 0 and info["started_at"] and info["version"]
        text = ok(run("info", "-socket", str(sock))).stdout
        assert str(agent.proc.pid) in text

        listing = _json(run("list", "-socket", str(sock), "-timeout", "5", "-json"))
        assert [(d["path"], d["status"]) for d in listing["databases"]] == [(str(db), "replicating")]
        assert listing["databases"][0]["last_sync_at"]
        assert f"{db} [replicating]" in ok(run("list", "-socket", str(sock))).stdout
        assert agent.stop() == 0


@pytest.mark.parametrize("cli", sorted(CLIENTS))
def test_sync_wait_returns_once_the_replica_holds_the_current_txid(tmp_path: Path, sock_dir: Path, cli: str) -> None:
    sock = sock_dir / "ctl.sock"
    run = CLIENTS[cli]
    agent, db, replica = _agent(tmp_path, sock)
    with agent:
        for batch in (1, 2, 3):
            write_batch(db, batch)
            out = _json(run("sync", "-socket", str(sock), "-wait", "-timeout", "20", "-json", str(db)))
            assert out["db_path"] == str(db)
            assert out["replica_txid"] == out["txid"] > 0
            # Returned only once the replica holds it: read at once, no waiting.
            assert max(l0_txids(replica)) >= out["txid"]
        text = ok(run("sync", "-socket", str(sock), str(db))).stdout
        assert f"db_path: {db}" in text and "txid:" in text and "replica_txid" not in text
        assert agent.stop() == 0
    restored = tmp_path / "restored.db"
    ok(litestream("restore", "-o", str(restored), file_url(replica)))
    assert {r[1] for r in rows(restored)} == {1, 2, 3}


@pytest.mark.parametrize("cli", sorted(CLIENTS))
def test_stop_and_start(tmp_path: Path, sock_dir: Path, cli: str) -> None:
    sock = sock_dir / "ctl.sock"
    run = CLIENTS[cli]
    agent, db, replica = _agent(tmp_path, sock)
    with agent:
        stopped = _json(run("stop", "-socket", str(sock), "-json", str(db)))
        assert (stopped["status"], stopped["db_path"], stopped["state"]) == ("stopped", str(db), "stopped")
        again = _json(run("stop", "-socket", str(sock), "-json", str(db)))
        assert again["status"] == "already_stopped"
        listing = _json(run("list", "-socket", str(sock), "-json"))
        assert listing["databases"][0]["status"] == "stopped"
        # A stopped database cannot be synced; the error is one line, exit 1.
        proc = run("sync", "-socket", str(sock), "-wait", str(db))
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr

        write_batch(db, 1)
        started = _json(run("start", "-socket", str(sock), "-json", str(db)))
        assert (started["status"], started["state"]) == ("started", "running")
        assert _json(run("start", "-socket", str(sock), "-json", str(db)))["status"] == "already_running"
        out = _json(run("sync", "-socket", str(sock), "-wait", "-json", str(db)))
        assert out["replica_txid"] == out["txid"]
        assert agent.stop() == 0, agent.output()
    restored = tmp_path / "restored.db"
    ok(litestream("restore", "-o", str(restored), file_url(replica)))
    assert {r[1] for r in rows(restored)} == {1}


@pytest.mark.parametrize("cli", sorted(CLIENTS))
def test_register_and_unregister(tmp_path: Path, sock_dir: Path, cli: str) -> None:
    sock = sock_dir / "ctl.sock"
    run = CLIENTS[cli]
    agent, _db, _replica = _agent(tmp_path, sock)
    other, other_replica = tmp_path / "other.db", tmp_path / "other-replica"
    create_db(other)
    write_batch(other, 7)
    with agent:
        reg = _json(run("register", "-socket", str(sock), "-replica", file_url(other_replica), "-json", str(other)))
        assert (reg["status"], reg["db_path"], reg["replica"]) == ("registered", str(other), file_url(other_replica))
        text = ok(run("register", "-socket", str(sock), "-replica", file_url(other_replica), str(other))).stdout
        assert "status: already registered" in text
        assert _json(run("info", "-socket", str(sock), "-json"))["database_count"] == 2

        write_batch(other, 8)
        out = _json(run("sync", "-socket", str(sock), "-wait", "-json", str(other)))
        assert out["replica_txid"] == out["txid"]

        unreg = _json(run("unregister", "-socket", str(sock), "-json", str(other)))
        assert (unreg["status"], unreg["final_txid"]) == ("unregistered", out["txid"])
        paths = [d["path"] for d in _json(run("list", "-socket", str(sock), "-json"))["databases"]]
        assert str(other) not in paths
        assert _json(run("unregister", "-socket", str(sock), "-json", str(other)))["status"] == "already_unregistered"
        assert agent.stop() == 0, agent.output()
    # The database's own replica, restorable by Litestream; its local state released for others.
    restored = tmp_path / "restored.db"
    ok(litestream("restore", "-o", str(restored), file_url(other_replica)))
    assert {r[1] for r in rows(restored)} == {7, 8}


@pytest.mark.parametrize("cli", sorted(CLIENTS))
def test_bad_requests_fail_in_one_line(tmp_path: Path, sock_dir: Path, cli: str) -> None:
    sock = sock_dir / "ctl.sock"
    run = CLIENTS[cli]
    missing = sock_dir / "missing.sock"
    for args in (("info",), ("list",), ("sync", "/x.db")):
        proc = run(args[0], "-socket", str(missing), *args[1:])
        assert proc.returncode == 1, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    agent, _db, _replica = _agent(tmp_path, sock)
    with agent:
        unknown = str(tmp_path / "unknown.db")
        for args in (("sync", unknown), ("start", unknown), ("stop", unknown),
                     ("register", "-replica", "bogus://x", unknown)):
            proc = run(args[0], "-socket", str(sock), *args[1:])
            assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
            assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert agent.stop() == 0, agent.output()


def test_lifeboat_cli_usage_errors(sock_dir: Path) -> None:
    for args in (("sync",), ("register", "/x.db"), ("info", "extra"), ("sync", "-timeout", "0", "/x.db")):
        proc = lifeboat(*args, "-socket", str(sock_dir / "s"))
        assert proc.returncode in (1, 2), (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
