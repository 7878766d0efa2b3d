"""What each import of the replicating agent costs in resident memory and time.

    python -P bench/import_cost.py            # what `lifeboat replicate` with a file replica loads
    python -P bench/import_cost.py --s3       # ... and boto3, and the S3 client an S3 replica builds
    python -P bench/import_cost.py --bulk     # ... and numpy, as heavy WAL traffic (> 32 MiB a minute) loads it

Imports `lifeboat.agent.replicate_cmd` and then the modules the agent loads lazily on its hot path, with
`builtins.__import__` wrapped: every import of a module outside `lifeboat` that starts while no other
such import is under way is charged the growth of VmRSS (and the wall time) until it returns, so a
package is charged with whatever it pulls in that was not loaded before. Lifeboat's own modules are
transparent: what they import is charged to the imported package. With `--s3`, building the S3
client (no request is made) is charged too: each botocore data file it loads, and the rest. Not part
of the harness (`run.py`).
"""

from __future__ import annotations

import argparse
import builtins
import os
import sys
import time
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def peak_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def build_s3_client() -> list[tuple[str, float, float]]:
    """Build the S3 client a replica builds; (what, MB, ms) per botocore data file loaded, and the rest."""
    import botocore.loaders
    from lifeboat.agent.storage import new_client

    rows: list[tuple[str, float, float]] = []
    real_load = botocore.loaders.Loader.load_data_with_path

    def charged(self: Any, name: str) -> Any:
        before, t0 = rss_mb(), time.perf_counter()
        try:
            return real_load(self, name)
        finally:
            rows.append((f"S3 client: botocore data {name}", rss_mb() - before, (time.perf_counter() - t0) * 1000))

    before, t0 = rss_mb(), time.perf_counter()
    botocore.loaders.Loader.load_data_with_path = charged  # type: ignore[method-assign]
    try:
        client = new_client({"url": "s3://bucket/db", "endpoint": "http://127.0.0.1:9",
                             "access-key-id": "AKIAEXAMPLE", "secret-access-key": "example"})
        assert client.handle is not None  # type: ignore[attr-defined]  # builds it; no request is made
    finally:
        botocore.loaders.Loader.load_data_with_path = real_load  # type: ignore[method-assign]
    total, ms = rss_mb() - before, (time.perf_counter() - t0) * 1000
    rest = ("S3 client: the rest (client class, endpoint rules, handlers)", total - sum(r[1] for r in rows),
            ms - sum(r[2] for r in rows))
    return [*rows, rest]


def measure(lazy: list[str]) -> tuple[float, list[tuple[str, float, float]]]:
    """Import the agent, then `lazy`; returns the RSS before and (root package, MB, ms) per charged import."""
    costs: dict[str, list[float]] = {}
    order: list[str] = []
    busy = False
    real_import = builtins.__import__

    def charged(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        nonlocal busy
        absolute = level == 0 and not name.startswith("lifeboat")
        if busy or not absolute or name in sys.modules:
            return real_import(name, globals, locals, fromlist, level)
        busy = True
        before, t0 = rss_mb(), time.perf_counter()
        try:
            return real_import(name, globals, locals, fromlist, level)
        finally:
            busy = False
            root = name.partition(".")[0]
            if root not in costs:
                costs[root] = [0.0, 0.0]
                order.append(root)
            costs[root][0] += rss_mb() - before
            costs[root][1] += (time.perf_counter() - t0) * 1000

    start = rss_mb()
    builtins.__import__ = charged
    try:
        import lifeboat.agent.replicate_cmd  # noqa: F401

        for module in lazy:
            __import__(module)
    finally:
        builtins.__import__ = real_import
    return start, [(root, *costs[root]) for root in order]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--s3", action="store_true", help="also the S3 client (boto3) an S3 replica loads")
    p.add_argument("--bulk", action="store_true", help="also numpy (heavy WAL traffic loads it)")
    p.add_argument("--min-mb", type=float, default=0.1, help="leave out imports that cost less")
    args = p.parse_args()
    lazy = (["numpy"] if args.bulk else []) + (["boto3"] if args.s3 else [])
    start, rows = measure(lazy)
    end = rss_mb()
    total = sum(mb for _, mb, _ in rows)
    client_rows = build_s3_client() if args.s3 else []
    print(f"interpreter before any agent import: {start:.1f} MB RSS; after the imports: {end:.1f} MB"
          + (f"; after building the S3 client: {rss_mb():.1f} MB (peak {peak_mb():.1f} MB)" if args.s3 else ""))
    print("| import (with what it pulls in first) | RSS MB | ms |\n|---|---:|---:|")
    print(f"| lifeboat's own modules (the rest of the growth) | {end - start - total:.1f} | |")
    small = [0.0, 0.0]
    for root, mb, ms in sorted(rows, key=lambda r: -r[1]):
        if mb < args.min_mb:
            small[0] += mb
            small[1] += ms
            continue
        print(f"| {root} | {mb:.1f} | {ms:.0f} |")
    print(f"| everything else | {small[0]:.1f} | {small[1]:.0f} |")
    for what, mb, ms in client_rows:
        print(f"| {what} | {mb:.1f} | {ms:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
