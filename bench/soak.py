"""Soak: SIGKILL the agent and the application at random moments for N minutes, then corrupt replicas.

    python bench/soak.py --minutes 30 [--corruptions 1000] [--storage-faults] [--workdir DIR]

Phase 1 (crash safety, most of the time): the `tests/chaos` harness in cycles of 0.3-2.5 s, with an
application that also checkpoints in every mode and a reader holding transactions for 0.5-5 s; a
quarter of the cycles end with SIGTERM (every row committed before it must be in the replica), the
rest with SIGKILL. After every stop both `lifeboat restore` and `litestream restore` are checked
(integrity, exact prefix of the committed rows, every row acknowledged through `/status` present).
The summary has the largest replica file count and WAL size seen: both must stay bounded. A fresh workspace
every 100 cycles keeps restores small.
With `--storage-faults`, alongside phase 1: back-to-back S3 workloads through the fault proxy of
`tests/storage/faults.py` in front of moto (5xx, SlowDown, hung requests, resets, slow responses,
cycled under a continuous writer; then the replica must catch up and a restore from moto must equal
the source). Needs moto (`.ci/services.sh`, started if missing).
Phase 2: `--corruptions` random bit flips, truncations and deletions of replica files, each followed
by a `lifeboat restore` that must either give the correct database or fail naming the damaged file.

Prints one JSON summary: cycles, faults injected, rows committed, rows verified, lost (must be 0).
Exit status 1 when anything was lost or corrupt.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(_TESTS), str(_TESTS / "chaos"), str(_TESTS / "e2e"), str(_TESTS / "storage")]

from chaos_harness import run_cycles  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--corruptions", type=int, default=1000)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--storage-faults", action="store_true", help="also cycle S3 faults (moto behind a proxy)")
    ap.add_argument("--no-app-behaviour", action="store_true",
                    help="only writes: no application checkpoints, no long readers, no graceful restarts")
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

    storage: dict[str, object] = {}
    storage_stop = threading.Event()
    storage_thread = None
    if args.storage_faults:
        storage_thread = threading.Thread(
            target=_storage_fault_loop, args=(work / "storage", storage_stop, storage), daemon=True
        )
        storage_thread.start()
    stats = run_cycles(
        work / "chaos",
        seconds=chaos_seconds,
        run_time=(0.3, 2.5),
        fresh_every=100,
        seed=args.seed,
        on_cycle=progress,
        app_behaviour=not args.no_app_behaviour,
        graceful_probability=0.0 if args.no_app_behaviour else 0.25,
    )
    summary: dict[str, object] = stats.summary()
    if storage_thread is not None:
        storage_stop.set()
        storage_thread.join()
        summary["storage_fault_runs"] = storage["runs"]
        summary["storage_faults_injected"] = storage["faults"]
        summary["storage_faults_by_mode"] = storage["by_mode"]
        summary["storage_rows_committed"] = storage["rows_committed"]
        summary["storage_rows_verified"] = storage["rows_verified"]
        summary["faults_injected"] = int(summary["faults_injected"]) + int(storage["faults"])  # type: ignore[call-overload]
        summary["rows_committed"] = int(summary["rows_committed"]) + int(storage["rows_committed"])  # type: ignore[call-overload]
        summary["rows_verified"] = int(summary["rows_verified"]) + int(storage["rows_verified"])  # type: ignore[call-overload]
        summary["lost"] = int(summary["lost"]) + int(storage["lost"])  # type: ignore[call-overload]
        summary["corrupt"] = int(summary["corrupt"]) + int(storage["corrupt"])  # type: ignore[call-overload]
        summary["failures"] = [*summary["failures"], *storage["failures"][:10]]  # type: ignore[misc]
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


def _storage_fault_loop(root: Path, stop: threading.Event, out: dict[str, object]) -> None:
    """S3 fault workloads back to back until `stop`; totals into `out`, failed runs kept on disk."""
    from faults import READ_TIMEOUT, run_fault_workload

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ["LIFEBOAT_S3_READ_TIMEOUT"] = str(READ_TIMEOUT)
    os.environ["LIFEBOAT_S3_CONNECT_TIMEOUT"] = str(READ_TIMEOUT)
    by_mode: dict[str, int] = {}
    failures: list[str] = []
    out.update(
        runs=0, faults=0, by_mode=by_mode, rows_committed=0, rows_verified=0, lost=0, corrupt=0, failures=failures
    )
    n = 0
    while not stop.is_set():
        n += 1
        run_dir = root / f"run{n}"
        try:
            res = run_fault_workload(run_dir)
        except Exception as exc:  # agent died / no catch-up: a failure, keep the evidence
            failures.append(f"storage-faults {run_dir}: {type(exc).__name__}: {str(exc)[-1500:]}")
            out["runs"] = n
            continue
        out["runs"] = n
        out["faults"] = int(out["faults"]) + int(res["faults"])  # type: ignore[call-overload]
        for mode, k in res["injected"].items():
            by_mode[mode] = by_mode.get(mode, 0) + k
        out["rows_committed"] = int(out["rows_committed"]) + int(res["rows_committed"])  # type: ignore[call-overload]
        out["rows_verified"] = int(out["rows_verified"]) + int(res["rows_restored"])  # type: ignore[call-overload]
        out["lost"] = int(out["lost"]) + int(res["lost"])  # type: ignore[call-overload]
        if not res["same"] or res["exit_code"] != 0:
            out["corrupt"] = int(out["corrupt"]) + (0 if res["same"] else 1)  # type: ignore[call-overload]
            failures.append(
                f"storage-faults {run_dir}: exit {res['exit_code']}, integrity {res['integrity']}, "
                f"{res['rows_restored']} of {res['rows_committed']} rows restored"
            )
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
        brief = {k: res[k] for k in ("injected", "rows_committed", "same")}
        print(f"[storage-faults run {n}] {json.dumps(brief)}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
