"""The agent scenario of bench/scale.py, small and short: 50 databases under one `dir:` entry with
`watch`, idle, then written (a few busy databases, then the same beside a hot one). Only
correctness is asserted: every database replicated, every commit found in the replica, every
database restored by the real `litestream` equal to its source, no error in the agent's log.
No figure of the benchmark is checked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import scale  # noqa: E402

DATABASES = 50


def test_fifty_databases_replicate_and_restore(tmp_path: Path) -> None:
    argv = ["--databases", str(DATABASES), "--pods", "0", "--replicas", "file", "--tools", "lifeboat",
            "--idle", "1", "--writes", "2", "--busy", "3", "--hot-rate", "100", "--restores", "-1",
            "--timeout", "600", "--out", str(tmp_path)]
    assert scale.main(argv) == 0
    run = json.loads((tmp_path / "scale.json").read_text())["agent"]["runs"]["file"]["lifeboat"]
    assert run["errors"] == []
    assert run["restored_ok"] == DATABASES
    for phase in ("lag", "fair"):
        assert run[phase]["commits"] > 0
        assert run[phase]["unmapped"] == 0, run[phase]
    assert (tmp_path / "scale.md").exists()
