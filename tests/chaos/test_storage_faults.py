"""Issue #8: `lifeboat replicate` keeps a continuous write workload replicated while the S3 endpoint
cycles through fault modes (5xx, throttling, hung requests, connection resets, slow responses; the
proxy in `tests/storage/faults.py` in front of moto). Once the faults clear, replication catches up
(`/status` remote_txid == txid) and a restore read directly from moto equals the source.

The agent runs with a 1 s S3 read timeout (LIFEBOAT_S3_READ_TIMEOUT) while hung requests hang 3 s:
the proxy counts the requests the client abandoned, so the timeout is shown to work, not assumed.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "storage"))

from faults import BUCKET, MODES, MOTO_ENDPOINT, FaultProxy, ensure_moto
from helpers import Agent, assert_same_db, create_db, lifeboat, no_traceback, ok, start_writer

MODE_SECONDS = 3.6  # per fault mode; five modes ≈ 18 s of faults under a continuous writer
READ_TIMEOUT = 1.0
HANG = 3.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(port: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
            return json.loads(r.read())["databases"][0]  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def config(path: Path, db: Path, port: int, endpoint: str, prefix: str) -> Path:
    path.write_text(
        f"""addr: 127.0.0.1:{port}
dbs:
  - path: {db}
    monitor-interval: 100ms
    replica:
      url: s3://{BUCKET}/{prefix}
      endpoint: {endpoint}
      region: us-east-1
      force-path-style: true
      sync-interval: 200ms
"""
    )
    return path


def test_replication_survives_cycling_storage_faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_moto()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("LIFEBOAT_S3_READ_TIMEOUT", str(READ_TIMEOUT))
    monkeypatch.setenv("LIFEBOAT_S3_CONNECT_TIMEOUT", str(READ_TIMEOUT))
    db = tmp_path / "app.db"
    create_db(db)
    prefix = f"faults-{uuid.uuid4().hex[:12]}"
    port = free_port()
    with FaultProxy(hang=HANG, delay=0.4) as proxy:
        cfg = config(tmp_path / "proxied.yml", db, port, proxy.endpoint, prefix)
        with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log") as agent:
            deadline = time.monotonic() + 30
            while not ((st := status(port)) and int(st["remote_txid"]) >= 1):  # type: ignore[call-overload]
                assert agent.alive() and time.monotonic() < deadline, f"no first upload:\n{agent.output()}"
                time.sleep(0.1)
            writer = start_writer(db, 1, 100_000, rows=10, pause=0.03)
            seen: dict[str, int] = {}
            try:
                for mode in MODES:
                    proxy.set_mode(mode, every=2)
                    before = int(status(port)["remote_txid"])  # type: ignore[index, call-overload]
                    until = time.monotonic() + MODE_SECONDS
                    while time.monotonic() < until:
                        assert agent.alive(), f"replicate died in fault mode {mode}:\n{agent.output()}"
                        assert writer.poll() is None, "the application writer stopped"
                        time.sleep(0.2)
                    seen[mode] = int(status(port)["remote_txid"]) - before  # type: ignore[index, call-overload]
            finally:
                proxy.set_mode(None)
                writer.terminate()
            writer.wait(timeout=30)
            # Faults cleared: the replica must catch up with everything captured.
            deadline = time.monotonic() + 30
            last = None
            while True:
                st = status(port)
                pos = (st["txid"], st["remote_txid"]) if st else None
                if pos and pos[0] == pos[1] and pos == last:  # equal, and stable for one poll
                    break
                assert agent.alive() and time.monotonic() < deadline, f"no catch-up: {st}\n{agent.output()[-4000:]}"
                last = pos
                time.sleep(0.5)
            caught_up = st
            code = agent.stop(timeout=60)
            log = agent.output()
    print(json.dumps({"injected": proxy.injected, "abandoned": proxy.abandoned, "uploads_per_mode": seen,
                      "requests": proxy.requests, "final": caught_up}))
    assert code == 0, f"replicate exited {code}:\n{log[-4000:]}"
    no_traceback(log)
    assert all(proxy.injected[m] >= 2 for m in MODES if m != "slow") and proxy.injected["slow"] >= 2, proxy.injected
    assert proxy.abandoned >= 1, f"no hung request was abandoned by the client ({proxy.injected})"
    # Uploads kept going under every mode except possibly the hung-request one.
    assert sum(1 for m in MODES if seen[m] > 0) >= 4, seen
    assert int(caught_up["remote_txid"]) > 10, caught_up  # type: ignore[call-overload]

    direct = config(tmp_path / "direct.yml", db, free_port(), MOTO_ENDPOINT, prefix)
    out = tmp_path / "restored.db"
    ok(lifeboat("restore", "-o", str(out), "-config", str(direct), str(db), timeout=120))
    assert_same_db(out, db)
