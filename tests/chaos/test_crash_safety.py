"""Crash safety: SIGKILL the agent (and sometimes the application) at random moments, ≥ 50 times.

The agent runs with checkpoints every few pages, 1 s / 3 s compaction levels, 5 s snapshots and 2 s
L0 retention, so random kill times land in the middle of L0 writes, uploads, checkpoints,
compactions, snapshots and retention. After every kill both `lifeboat restore` and `litestream
restore` must give a database that passes integrity_check, holds exactly a prefix of the rows the
application committed, and contains every row the agent had acknowledged via `/status` (see
`chaos_harness` for how a remote TXID is mapped to rows).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from chaos_harness import Workspace, run_cycles

CYCLES = 50


def test_sigkill_agent_and_app_at_random_moments(tmp_path: Path) -> None:
    stats = run_cycles(tmp_path, CYCLES, seed=None)
    summary = stats.summary()
    print(json.dumps(summary))
    assert stats.failures == [], json.dumps(summary, indent=1)
    assert stats.cycles == CYCLES
    assert stats.agent_kills == CYCLES
    assert stats.lost == 0 and stats.corrupt == 0
    assert stats.restores == 2 * CYCLES
    # The acknowledgement logic did acknowledge rows (a vacuous check would prove nothing).
    assert stats.acked_max > 0
    assert stats.rows_verified >= stats.acked_max


def test_ordinary_app_behaviour_under_kills_and_restarts(tmp_path: Path) -> None:
    """The same, with the application checkpointing in every mode, a reader holding transactions for
    0.5-5 s, and a third of the cycles ending with SIGTERM, whose final sync must ship every row
    committed before the signal. The replica's file count stays bounded while readers block
    checkpoints (no capture loop writing files on its own)."""
    cycles = 24
    stats = run_cycles(tmp_path, cycles, app_behaviour=True, graceful_probability=0.33)
    summary = stats.summary()
    print(json.dumps(summary))
    assert stats.failures == [], json.dumps(summary, indent=1)
    assert stats.lost == 0 and stats.corrupt == 0
    assert stats.agent_kills + stats.agent_stops == cycles
    assert stats.acked_max > 0
    assert stats.max_replica_files < 600, summary


def test_restarted_agent_takes_over_its_own_stale_lease(tmp_path: Path) -> None:
    """A SIGKILLed agent leaves its lease behind; the restart on the same host takes it over."""
    ws = Workspace(tmp_path / "ws")
    try:
        ws.start_app()
        ws.start_agent()

        deadline = time.monotonic() + 30
        while (st := ws.status()) is None or st["remote_txid"] == 0:
            assert time.monotonic() < deadline, ws.agent_output()
            time.sleep(0.05)
        ws.kill_agent()
        lock = list(ws.replica.rglob("lock.json"))
        assert lock, "a SIGKILLed agent leaves its lease file"
        ws.start_agent()
        first = st["remote_txid"]
        deadline = time.monotonic() + 30
        while (st := ws.status()) is None or st["remote_txid"] <= first:
            assert ws.agent is not None and ws.agent.poll() is None, ws.agent_output()
            assert time.monotonic() < deadline, ws.agent_output()
            time.sleep(0.05)
    finally:
        ws.close()
