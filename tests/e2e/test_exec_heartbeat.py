"""`replicate -exec` (the application as the agent's child) and `heartbeat-url`, as users run them."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import LIFEBOAT, create_db, file_url, lifeboat, ok, rows, wait_for

# The application: writes batch 1, then waits (for SIGTERM, or a while), writes its last batch and exits
# with the status it was given, or kills itself with a signal.
APP = r"""
import os, signal, sqlite3, sys, time
db, how = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(db, isolation_level=None, timeout=30)
def batch(b):
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO t (batch, v) VALUES (?, ?)", [(b, "x" * 100) for _ in range(20)])
    conn.execute("COMMIT")
batch(1)
if how == "term":
    got = []
    signal.signal(signal.SIGTERM, lambda *a: got.append(1))
    open(db + ".ready", "w").close()
    while not got:
        time.sleep(0.01)
    batch(2)  # work done after the signal must still reach the replica
    sys.exit(0)
batch(2)
if how.startswith("kill"):
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(int(how))
"""


def _replicate_exec(tmp_path: Path, how: str, *, use_config: bool = False) -> tuple[subprocess.Popen[str], Path, Path]:
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    create_db(db)
    app = tmp_path / "app.py"
    app.write_text(APP)
    cmd = f"{sys.executable} {app} {db} {how}"
    if use_config:
        cfg = tmp_path / "lifeboat.yml"
        cfg.write_text(f"exec: {cmd}\ndbs:\n  - path: {db}\n    replica:\n      url: {file_url(replica)}\n")
        args = ["-config", str(cfg)]
    else:
        args = ["-exec", cmd, str(db), file_url(replica)]
    proc = subprocess.Popen([*LIFEBOAT, "replicate", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    return proc, db, replica


def _restored_batches(tmp_path: Path, replica: Path) -> set[int]:
    out = tmp_path / "restored.db"
    ok(lifeboat("restore", "-o", str(out), file_url(replica)))
    return {r[1] for r in rows(out)}


@pytest.mark.parametrize(("how", "code"), [("0", 0), ("3", 3), ("kill", 128 + signal.SIGKILL)])
def test_exec_exits_with_the_childs_status_after_a_final_sync(tmp_path: Path, how: str, code: int) -> None:
    proc, _db, replica = _replicate_exec(tmp_path, how)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, out
    assert "Traceback" not in out
    assert _restored_batches(tmp_path, replica) == {1, 2}, out


def test_exec_forwards_sigterm_and_ships_what_the_child_wrote_after_it(tmp_path: Path) -> None:
    proc, db, replica = _replicate_exec(tmp_path, "term", use_config=True)
    wait_for(lambda: os.path.exists(f"{db}.ready") or proc.poll() is not None, 30, what="child ready")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert _restored_batches(tmp_path, replica) == {1, 2}, out


def test_exec_that_cannot_start_is_one_line_and_exit_1(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    create_db(db)
    proc = lifeboat("replicate", "-exec", "/nonexistent/app --flag", str(db), file_url(tmp_path / "r"))
    assert proc.returncode == 1, proc.stderr
    assert "/nonexistent/app" in proc.stderr and "Traceback" not in proc.stderr
    bad = lifeboat("replicate", "-exec", "app 'unclosed", str(db), file_url(tmp_path / "r"))
    assert bad.returncode == 1 and "-exec" in bad.stderr and "Traceback" not in bad.stderr


class _Pings(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []
    status = 200

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def ping_server() -> object:
    _Pings.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pings)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _agent_with_heartbeat(tmp_path: Path, port: int, replica_url: str) -> tuple[subprocess.Popen[str], Path]:
    db = tmp_path / "app.db"
    create_db(db)
    cfg = tmp_path / "lifeboat.yml"
    cfg.write_text(
        f"heartbeat-url: http://127.0.0.1:{port}/ping/secret-token\nheartbeat-interval: 1m\n"
        f"dbs:\n  - path: {db}\n    replica:\n      url: {replica_url}\n"
    )
    env = dict(os.environ, LIFEBOAT_PRIVATE_HEARTBEAT_INTERVAL="0.5")
    log = tmp_path / "agent.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([*LIFEBOAT, "replicate", "-config", str(cfg)], stdout=f, stderr=subprocess.STDOUT,
                                text=True, env=env)
    return proc, log


def _stop(proc: subprocess.Popen[str], log: Path) -> str:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    return log.read_text()


def test_heartbeat_is_sent_while_replicated(tmp_path: Path, ping_server: http.server.HTTPServer) -> None:
    proc, log = _agent_with_heartbeat(tmp_path, ping_server.server_address[1], file_url(tmp_path / "replica"))
    try:
        wait_for(lambda: len(_Pings.hits) >= 3 or proc.poll() is not None, 30, what="three heartbeats")
    finally:
        out = _stop(proc, log)
    assert proc.returncode == 0, out
    assert _Pings.hits[0] == "/ping/secret-token"
    assert "secret-token" not in out


def test_heartbeat_is_withheld_when_the_replica_is_unwritable(
    tmp_path: Path, ping_server: http.server.HTTPServer
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the replica directory should be")
    proc, log = _agent_with_heartbeat(tmp_path, ping_server.server_address[1], file_url(blocker / "replica"))
    try:
        wait_for(lambda: proc.poll() is not None or "heartbeat withheld" in log.read_text(), 30, what="withheld")
    finally:
        out = _stop(proc, log)
    assert _Pings.hits == [], out
