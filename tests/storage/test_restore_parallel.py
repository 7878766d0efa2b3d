"""Parallel restore: several GETs at once, large files as ranged parts, files applied while later
ones download. On every backend it gives the same bytes as a one-GET-at-a-time restore; faults in
its GETs are retried or resumed; the files running ahead of the applier stay within their window;
and -parallelism is validated.

The replica is written by `lifeboat replicate -once` into a directory, then copied file by file to
the backend under test through `write_ltx_file`.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import FaultProxy
from helpers import assert_same_db, create_db, lifeboat, no_traceback, ok, write_config
from lifeboat.agent import restore_fetch
from lifeboat.agent.progress import Transfer
from lifeboat.agent.restore import RestoreError, list_levels, plan, restore
from lifeboat.agent.storage import FileInfo, new_client, parse_ltx_name
from replica_helpers import BUCKET, PORTS, S3_ENDPOINT, SFTPServer

L0_FILES = 12


def _replicated(tmp_path: Path, rows: int = 300) -> tuple[Path, Path]:
    """A database whose file replica holds L0_FILES L0 files: the first the whole database (about
    `rows` * 2 KiB), the others small; (database, replica directory)."""
    db, replica = tmp_path / "src.db", tmp_path / "replica"
    create_db(db)
    config = write_config(tmp_path / "replicate.yml", db, replica)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executemany("INSERT INTO t (batch, v) VALUES (0, ?)", [(os.urandom(1024).hex(),) for _ in range(rows)])
    ok(lifeboat("replicate", "-once", "-config", str(config)))
    for k in range(1, L0_FILES):
        conn.execute("INSERT INTO t (batch, v) VALUES (?, 'x')", (k,))
        ok(lifeboat("replicate", "-once", "-config", str(config)))
    conn.close()
    return db, replica


async def _copy(replica: Path, client: Any) -> None:
    """Every LTX file of the directory replica into `client`'s replica."""
    for level_dir in sorted((replica / "ltx").iterdir()):
        for path in sorted(level_dir.iterdir()):
            txids = parse_ltx_name(path.name)
            if txids is not None:
                with open(path, "rb") as src:
                    await client.write_ltx_file(int(level_dir.name), *txids, src)


def _record_gets(client: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int, int | None]]:
    """(level, min_txid, offset, size) of every read `client` is asked for, in order."""
    gets: list[tuple[int, int, int, int | None]] = []
    real = client.open_ltx_file

    def spy(level: int, min_txid: int, max_txid: int, offset: int = 0, size: int | None = None) -> Any:
        gets.append((level, min_txid, offset, size))
        return real(level, min_txid, max_txid, offset, size)

    monkeypatch.setattr(client, "open_ltx_file", spy)
    return gets


async def test_parallel_restore_is_byte_identical_to_sequential(
    client: Any, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, replica = _replicated(tmp_path)
    await _copy(replica, client)
    gets = _record_gets(client, monkeypatch)
    # One GET at a time, every file whole...
    monkeypatch.setattr(restore_fetch, "PART_SIZE", 1 << 40)
    sequential = tmp_path / "sequential.db"
    await restore(client, str(sequential), parallelism=1, integrity_check="full")
    assert all(offset == 0 for _, _, offset, _ in gets), gets
    # ... and eight at once, the first (whole-database) file in 32 KiB ranges.
    gets.clear()
    monkeypatch.setattr(restore_fetch, "PART_SIZE", 32 << 10)
    parallel = tmp_path / "parallel.db"
    result = await restore(client, str(parallel), parallelism=8, integrity_check="full")
    assert result is not None and result.integrity_check == "ok"
    ranged = [g for g in gets if g[2] > 0]
    if backend == "nats":  # a range read replays the object from its start: never split
        assert not ranged, gets
    else:
        assert len(ranged) >= 5, gets
    assert parallel.read_bytes() == sequential.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("parallel")) == ["parallel.db"]
    assert_same_db(parallel, db)


@pytest.fixture
def proxy(servers: SFTPServer) -> Iterator[FaultProxy]:
    with FaultProxy(PORTS["s3"]) as p:
        yield p


def _s3_settings(endpoint: str, name: str) -> dict[str, Any]:
    return {
        "url": f"s3://{BUCKET}/{name}?endpoint={endpoint}&region=us-east-1",
        "access-key-id": "test",
        "secret-access-key": "test",
    }


async def _proxied_replica(tmp_path: Path) -> tuple[Path, str]:
    """The test replica copied straight to moto; (database, replica name)."""
    db, replica = _replicated(tmp_path)
    name = f"restore-parallel-{uuid.uuid4().hex[:12]}"
    direct = new_client(_s3_settings(S3_ENDPOINT, name))
    try:
        await _copy(replica, direct)
    finally:
        await direct.close()
    return db, name


@pytest.mark.parametrize("mode", ["cut", "reset", "5xx"])
async def test_faults_in_parallel_gets_are_resumed_or_retried(
    mode: str, proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, name = await _proxied_replica(tmp_path)
    monkeypatch.setattr(restore_fetch, "PART_SIZE", 64 << 10)  # the first file: about ten ranged GETs
    monkeypatch.setattr(restore_fetch, "DOWNLOAD_BACKOFF", 0.01)
    proxy.cut_over = 16 << 10  # a part's body is cut halfway, small files go through
    proxy.set_mode(mode, every=3)
    client = new_client(_s3_settings(proxy.endpoint, name))
    out = tmp_path / "restored.db"
    try:
        result = await restore(client, str(out), parallelism=8, integrity_check="full")
    finally:
        await client.close()
    assert result is not None and result.integrity_check == "ok"
    assert proxy.injected[mode] >= 2, proxy.injected
    if mode == "cut":  # resumed inside a part: a range starting neither at 0 nor at a part boundary
        starts = [int(r.removeprefix("bytes=").split("-")[0]) for r in proxy.ranges if r]
        assert any(s % (64 << 10) for s in starts), proxy.ranges
    assert_same_db(out, db)


async def test_a_corrupt_part_fails_naming_the_file_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, replica = _replicated(tmp_path)
    first = min((replica / "ltx" / "0").iterdir())  # the whole database
    data = bytearray(first.read_bytes())
    data[len(data) * 3 // 4] ^= 0xFF  # inside a late part, fetched while earlier ones are applied
    first.write_bytes(bytes(data))
    monkeypatch.setattr(restore_fetch, "PART_SIZE", 32 << 10)
    out = tmp_path / "restored.db"
    with pytest.raises(RestoreError, match=f"level 0 file {first.name}"):
        await restore(new_client({"url": f"file://{replica}"}), str(out), parallelism=8)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("restored")) == []


async def _fetch_counting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: int, check: Callable[[int, list[int], Path], None]
) -> restore_fetch.Fetcher:
    """Fetch the test replica's plan with 2 GETs at once and `window`, consuming one file at a time
    slowly (each consumed file waits for the event loop to go round a few times); `check(i,
    files requested, work directory)` runs when file i is handed over."""
    _, replica = _replicated(tmp_path, rows=20)
    client = new_client({"url": f"file://{replica}"})
    gets = _record_gets(client, monkeypatch)
    files: list[FileInfo] = plan(await list_levels(client))
    assert len(files) >= L0_FILES
    index = {(f.level, f.min_txid): i for i, f in enumerate(files)}
    work = tmp_path / "work"
    work.mkdir()

    def report(_: Transfer) -> None:
        pass

    async with restore_fetch.Fetcher(client, files, work, 2, report, window=window) as fetcher:
        for i in range(len(files)):
            await fetcher.ready(i)
            for _ in range(20):  # give the downloads every chance to run ahead
                await asyncio.sleep(0)
            check(i, [index[(lvl, txid)] for lvl, txid, _, _ in gets], work)
            await fetcher.release(i)
    assert list(work.iterdir()) == []
    return fetcher


async def test_files_ahead_of_the_applier_never_exceed_the_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    window = 3

    def check(i: int, requested: list[int], work: Path) -> None:
        assert max(requested) < i + window, (i, requested)
        assert len(list(work.iterdir())) <= window

    fetcher = await _fetch_counting(tmp_path, monkeypatch, window, check)
    assert fetcher.high_water <= window


async def test_bytes_ahead_of_the_applier_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restore_fetch, "AHEAD_BYTES", 1)  # no file fits: only the applier's own

    def check(i: int, requested: list[int], work: Path) -> None:
        assert max(requested) == i, (i, requested)
        assert len(list(work.iterdir())) == 1

    fetcher = await _fetch_counting(tmp_path, monkeypatch, 8, check)
    assert fetcher.high_water == 1


@pytest.mark.parametrize("value", ["0", "-1", "65", "abc"])
def test_parallelism_out_of_range_is_one_line(value: str, tmp_path: Path) -> None:
    proc = lifeboat("restore", "-parallelism", value, "-o", str(tmp_path / "out.db"), f"file://{tmp_path}")
    assert proc.returncode != 0
    no_traceback(proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if "parallelism" in line]
    assert len(errors) == 1 and value in errors[0], proc.stderr
    assert not (tmp_path / "out.db").exists()
