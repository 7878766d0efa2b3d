"""`validation.interval` and `verify-compaction` on a running agent: a file removed from the replica
behind its back is reported by name in the log and counted in `/metrics`."""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path

from helpers import Agent, create_db, wait_for, wait_replica_started, write_batch

SAMPLE = re.compile(r'^(\w+)\{db="([^"]*)"\} (\S+)$')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metric(port: int, name: str, db: Path) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) == name and m.group(2) == str(db):
            return float(m.group(3))
    raise AssertionError(f"{name}{{db={db}}} not in /metrics")


def _level_files(replica: Path, level: int) -> list[str]:
    d = replica / "ltx" / str(level)
    return sorted(n.name for n in d.iterdir() if n.suffix == ".ltx") if d.is_dir() else []


def _start(tmp_path: Path, extra: str) -> tuple[Agent, Path, Path, int]:
    db = tmp_path / "app.db"
    replica = tmp_path / "replica"
    create_db(db)
    port = _free_port()
    cfg = tmp_path / "lifeboat.yml"
    cfg.write_text(
        f"addr: 127.0.0.1:{port}\nl0-retention: 1h\n{extra}"
        f"dbs:\n  - path: {db}\n    replica:\n      url: file://{replica}\n"
    )
    agent = Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log")
    wait_replica_started(agent, replica)
    return agent, db, replica, port


def test_validation_reports_a_gap_in_l0(tmp_path: Path) -> None:
    agent, db, replica, port = _start(tmp_path, "validation:\n  interval: 200ms\n")
    with agent:
        batch = 0

        def enough_l0() -> bool:
            nonlocal batch
            batch += 1
            write_batch(db, batch)
            return len(_level_files(replica, 0)) >= 5

        wait_for(enough_l0, interval=0.1, what="five L0 files")
        assert _metric(port, "lifeboat_validation_errors", db) == 0
        victim = _level_files(replica, 0)[2]
        (replica / "ltx" / "0" / victim).unlink()

        wait_for(lambda: _metric(port, "lifeboat_validation_errors", db) >= 1, what="validation error metric")
        wait_for(lambda: "validation error detected" in agent.output(), what="validation log line")
        line = next(ln for ln in agent.output().splitlines() if "validation error detected" in ln)
        missing = int(victim[:16], 16)
        assert "level=0" in line and "type=gap" in line, line
        assert f"{missing - 1:016x}" in line and f"{missing + 1:016x}" in line, line
        assert agent.stop() == 0, agent.output()


def test_verify_compaction_counts_a_level_left_with_a_gap(tmp_path: Path) -> None:
    agent, db, replica, port = _start(tmp_path, "verify-compaction: true\nlevels:\n  - interval: 1s\n")
    with agent:
        batch = 0

        def write_until(pred: object) -> object:
            def step() -> bool:
                nonlocal batch
                batch += 1
                write_batch(db, batch)
                return bool(pred())  # type: ignore[operator]

            return wait_for(step, timeout=60, interval=0.2, what="compactions")

        write_until(lambda: len(_level_files(replica, 1)) >= 3)
        # Every compaction so far wrote a sound file into a contiguous level.
        assert _metric(port, "litestream_compaction_verify_error_count", db) == 0
        assert "post-compaction verification failed" not in agent.output()

        victim = _level_files(replica, 1)[1]
        (replica / "ltx" / "1" / victim).unlink()
        write_until(lambda: _metric(port, "litestream_compaction_verify_error_count", db) >= 1)
        line = next(ln for ln in agent.output().splitlines() if "post-compaction verification failed" in ln)
        assert "level=1" in line and "gap" in line, line
        assert agent.stop() == 0, agent.output()
