"""Damaged replica files (100 random cases): restore is right or fails naming the file, never wrong."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chaos"))

from corruption_harness import run_corruptions

CASES = 100


def test_bitflips_truncations_deletions(tmp_path: Path) -> None:
    result = run_corruptions(tmp_path, CASES)
    print(json.dumps(result))
    assert result["failures"] == [], json.dumps(result, indent=1)
    assert result["cases"] == CASES
    assert result["wrong"] == 0
    # Both outcomes were exercised: damage the plan needs, and damage it can do without.
    assert result["failed_naming_file"] > 0
    assert result["restored_correct"] > 0
