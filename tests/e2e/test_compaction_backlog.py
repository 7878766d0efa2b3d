"""Compaction after an outage: thousands of L0 files merge in bounded batches.

A container's soft RLIMIT_NOFILE is often 1,024 (here 256): a compaction that opened every input
at once failed with EMFILE, and held one page per input in memory. The compacted file must restore,
with both tools, to exactly the source database.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import assert_same_db, create_db, file_url, lifeboat, litestream, ok
from lifeboat.agent.db import Database
from lifeboat.agent.replica import Replica
from lifeboat.agent.storage.file import FileReplicaClient

L0_FILES = 2000
PAGE_SIZE = 65536  # one page per input held by a merge of everything at once: 2000 x 64 KiB

COMPACT = textwrap.dedent(
    """
    import asyncio, json, resource, sys, tracemalloc
    from pathlib import Path
    from types import SimpleNamespace
    from lifeboat.agent.compaction import Lifecycle, LifecycleSettings
    from lifeboat.agent.storage.file import FileReplicaClient

    replica, meta = sys.argv[1], Path(sys.argv[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    db = SimpleNamespace(
        path="app.db", meta_dir=meta, l0_path=lambda t: meta / "ltx" / "0" / f"{t:016x}-{t:016x}.ltx"
    )

    async def main():
        client = FileReplicaClient(replica)
        await client.init()
        tracemalloc.start()
        info = await Lifecycle(db, client, LifecycleSettings(levels=[30.0])).compact(1)
        print(json.dumps({"min": info.min_txid, "max": info.max_txid, "peak": tracemalloc.get_traced_memory()[1]}))

    asyncio.run(main())
    """
)


def _replica_of_many_l0_files(path: Path, replica_dir: Path) -> Path:
    """The database and a directory replica of `L0_FILES` L0 files, one commit each; returns the meta dir."""
    create_db(path, PAGE_SIZE)
    db = Database(str(path))
    db.open()
    app = sqlite3.connect(path, isolation_level=None)
    try:
        db.sync()
        for i in range(L0_FILES - 1):
            app.execute("INSERT INTO t (batch, v) VALUES (?, ?)", (i, f"row {i} " * (1 + i % 50)))
            if i % 97 == 0:
                app.execute("DELETE FROM t WHERE batch < ?", (i - 500,))
            db.sync()
        assert db.pos == L0_FILES

        async def upload() -> None:
            client = FileReplicaClient(str(replica_dir))
            await client.init()
            await Replica(db, client).sync()

        asyncio.run(upload())
        return db.meta_dir
    finally:
        app.close()
        db.close()


def test_compaction_of_thousands_of_l0_files_under_a_low_file_limit(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    replica_dir = tmp_path / "replica"
    meta = _replica_of_many_l0_files(path, replica_dir)

    proc = subprocess.run(
        [sys.executable, "-c", COMPACT, str(replica_dir), str(meta)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert (result["min"], result["max"]) == (1, L0_FILES)
    # Memory does not grow with the inputs: far below one page per input (2000 x 64 KiB = 125 MiB).
    assert result["peak"] < 24 * 2**20, result

    # Restore from the compacted level alone: L0 removed from a copy of the replica.
    only_l1 = tmp_path / "only-l1"
    shutil.copytree(replica_dir, only_l1, ignore=shutil.ignore_patterns("lock.json"))
    for level in (only_l1 / "ltx").iterdir():
        if level.name != "1":
            shutil.rmtree(level)
    assert [p.name for p in (only_l1 / "ltx" / "1").iterdir()] == [f"{1:016x}-{L0_FILES:016x}.ltx"]
    by_lifeboat = tmp_path / "by-lifeboat.db"
    ok(lifeboat("restore", "-integrity-check", "full", "-o", str(by_lifeboat), file_url(only_l1)))
    assert_same_db(by_lifeboat, path)
    by_litestream = tmp_path / "by-litestream.db"
    ok(litestream("restore", "-o", str(by_litestream), file_url(only_l1)))
    assert_same_db(by_litestream, path)
