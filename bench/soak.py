"""Soak: SIGKILL the agent and the application at random moments for N minutes, then corrupt replicas.

    python bench/soak.py --minutes 30 [--corruptions 1000] [--workdir DIR] [--json]

Phase 1 (crash safety, most of the time): the `tests/chaos` harness in cycles of 0.3-2.5 s; after
every agent SIGKILL both `lifeboat restore` and `litestream restore` are checked (integrity, exact
prefix of the committed rows, every row acknowledged through `/status` present). A fresh workspace
every 100 cycles keeps restores small.
Phase 2: `--corruptions` random bit flips, truncations and deletions of replica files, each followed
by a `lifeboat restore` that must either give the correct database or fail naming the damaged file.

Prints one JSON summary: cycles, faults injected, rows committed, rows verified, lost (must be 0).
Exit status 1 when anything was lost or corrupt.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(_TESTS), str(_TESTS / "chaos"), str(_TESTS / "e2e")]

from chaos_harness import run_cycles  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--corruptions", type=int, default=1000)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--seed", type=int)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lifeboat-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    corr_share = 0.0 if args.corruptions == 0 else min(0.25, 0.0004 * args.corruptions)
    chaos_seconds = args.minutes * 60 * (1 - corr_share)

    def progress(stats: object) -> None:
        s = stats.summary()  # type: ignore[attr-defined]
        if s["cycles"] % 25 == 0:
            print(
                f"[{time.monotonic() - started:7.0f}s] {json.dumps({k: v for k, v in s.items() if k != 'failures'})}",
                file=sys.stderr,
                flush=True,
            )

    stats = run_cycles(
        work / "chaos",
        seconds=chaos_seconds,
        run_time=(0.3, 2.5),
        fresh_every=100,
        seed=args.seed,
        on_cycle=progress,
    )
    summary: dict[str, object] = stats.summary()
    if args.corruptions:
        from corruption_harness import run_corruptions

        corr = run_corruptions(work / "corruption", args.corruptions, seed=args.seed)
        summary["corruption_cases"] = corr["cases"]
        summary["corruption_restored_correct"] = corr["restored_correct"]
        summary["corruption_failed_naming_file"] = corr["failed_naming_file"]
        summary["corruption_wrong_database"] = corr["wrong"]
        summary["faults_injected"] = int(summary["faults_injected"]) + corr["cases"]  # type: ignore[call-overload]
        summary["failures"] = [*summary["failures"], *corr["failures"][:10]]  # type: ignore[misc]
        summary["corrupt"] = int(summary["corrupt"]) + corr["wrong"]  # type: ignore[call-overload]
    summary["minutes"] = round((time.monotonic() - started) / 60, 2)
    summary["workdir"] = str(work)
    print(json.dumps(summary, indent=1))
    return 0 if summary["lost"] == 0 and summary["corrupt"] == 0 and not summary["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
