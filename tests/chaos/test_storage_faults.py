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
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "storage"))

from faults import MODES, READ_TIMEOUT, run_fault_workload
from helpers import no_traceback

MODE_SECONDS = 3.6  # per fault mode; five modes ≈ 18 s of faults under a continuous writer


def test_replication_survives_cycling_storage_faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("LIFEBOAT_S3_READ_TIMEOUT", str(READ_TIMEOUT))
    monkeypatch.setenv("LIFEBOAT_S3_CONNECT_TIMEOUT", str(READ_TIMEOUT))
    res = run_fault_workload(tmp_path, MODE_SECONDS)
    log = res.pop("log")
    print(json.dumps(res))
    assert res["exit_code"] == 0, f"replicate exited {res['exit_code']}:\n{log[-4000:]}"
    no_traceback(log)
    assert all(res["injected"].get(m, 0) >= 2 for m in MODES), res["injected"]
    assert res["abandoned"] >= 1, f"no hung request was abandoned by the client ({res['injected']})"
    # Uploads kept going under every mode except possibly the hung-request one.
    assert sum(1 for m in MODES if res["uploads_per_mode"][m] > 0) >= 4, res["uploads_per_mode"]
    assert res["final"]["remote_txid"] == res["final"]["txid"] > 10, res["final"]
    # The restore read directly from moto equals the source.
    assert res["integrity"] == "ok", res["integrity"]
    assert res["rows_committed"] > 100 and res["same"], (res["rows_committed"], res["rows_restored"])
