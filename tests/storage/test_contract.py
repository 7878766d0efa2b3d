"""The ReplicaClient contract, run against every backend's real server (see conftest.py)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import struct
import tempfile
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from lifeboat.agent.storage import FileInfo, NotFound, PreconditionFailed, read_ltx_file
from storage_helpers import raw_put

T0 = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)


def ltx_bytes(ts: datetime = T0, size: int = 4096, seed: int = 0) -> bytes:
    """A blob that starts like an LTX file (magic + header timestamp) followed by filler."""
    head = bytearray(100)
    head[:4] = b"LTX1"
    struct.pack_into(">q", head, 32, int(ts.timestamp() * 1000))
    body = hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    return bytes(head) + body[: max(0, size - 100)]


async def put(client: Any, level: int, lo: int, hi: int, data: bytes) -> FileInfo:
    return await client.write_ltx_file(level, lo, hi, io.BytesIO(data))


async def read(client: Any, level: int, lo: int, hi: int, offset: int = 0, size: int | None = None) -> bytes:
    return b"".join([c async for c in client.open_ltx_file(level, lo, hi, offset, size)])


async def test_empty_store(client: Any) -> None:
    for level in (0, 1, 9):
        assert await client.ltx_files(level) == []
        assert await client.ltx_files(level, use_metadata=True) == []
    with pytest.raises(NotFound):
        await read(client, 0, 1, 1)
    await client.delete_all()
    await client.delete_ltx_files([FileInfo(0, 5, 5, 1, T0)])


async def test_write_list_open(client: Any) -> None:
    data = {(0, n, n): ltx_bytes(size=1000 + n, seed=n) for n in (3, 1, 2, 10)}
    data[(1, 1, 3)] = ltx_bytes(size=5000, seed=99)
    data[(9, 1, 10)] = ltx_bytes(size=7000, seed=77)
    for (level, lo, hi), blob in data.items():
        info = await put(client, level, lo, hi, blob)
        assert (info.level, info.min_txid, info.max_txid, info.size) == (level, lo, hi, len(blob))
        assert info.created_at == T0

    level0 = await client.ltx_files(0)
    assert [(f.min_txid, f.max_txid, f.size) for f in level0] == [(n, n, len(data[(0, n, n)])) for n in (1, 2, 3, 10)]
    assert [f.min_txid for f in await client.ltx_files(0, seek=3)] == [3, 10]
    assert [f.min_txid for f in await client.ltx_files(0, seek=4)] == [10]
    assert await client.ltx_files(0, seek=11) == []
    assert [(f.min_txid, f.max_txid) for f in await client.ltx_files(1)] == [(1, 3)]
    assert [(f.min_txid, f.max_txid) for f in await client.ltx_files(9)] == [(1, 10)]
    assert await client.ltx_files(2) == []

    for (level, lo, hi), blob in data.items():
        assert await read(client, level, lo, hi) == blob
    blob = data[(9, 1, 10)]
    assert await read(client, 9, 1, 10, offset=100, size=50) == blob[100:150]
    assert await read(client, 9, 1, 10, offset=6990) == blob[6990:]
    assert await read(client, 9, 1, 10, offset=6990, size=100) == blob[6990:]
    assert await read(client, 9, 1, 10, offset=7000) == b""
    assert await read(client, 9, 1, 10, offset=5, size=0) == b""
    with pytest.raises(NotFound):
        await read(client, 9, 1, 11)

    # A name is written once: another file under it is refused and the first stays whole, while
    # the same file again (a retry whose answer was lost) is a success.
    with pytest.raises(PreconditionFailed):
        await put(client, 0, 2, 2, ltx_bytes(size=300, seed=5))
    assert await read(client, 0, 2, 2) == data[(0, 2, 2)]
    assert (await put(client, 0, 2, 2, data[(0, 2, 2)])).size == len(data[(0, 2, 2)])


async def test_created_at_round_trips(client: Any) -> None:
    stamps = [T0, T0 + timedelta(days=400, milliseconds=1), datetime(2030, 1, 1, tzinfo=UTC)]
    for n, ts in enumerate(stamps, start=1):
        await put(client, 0, n, n, ltx_bytes(ts, seed=n))
    files = await client.ltx_files(0, use_metadata=True)
    if client.type == "sftp":
        # SFTP v3 carries whole-second mtimes (Litestream's SFTP replicas have the same limit).
        stamps = [ts.replace(microsecond=0) for ts in stamps]
    assert [f.created_at for f in files] == stamps
    assert all(f.created_at.tzinfo is not None for f in await client.ltx_files(0))


async def test_delete(client: Any) -> None:
    for n in range(1, 6):
        await put(client, 0, n, n, ltx_bytes(seed=n))
    await put(client, 1, 1, 5, ltx_bytes(seed=9))
    files = await client.ltx_files(0)
    # Deleting a missing file alongside existing ones is not an error.
    await client.delete_ltx_files([files[0], files[2], FileInfo(0, 77, 77, 1, T0)])
    assert [f.min_txid for f in await client.ltx_files(0)] == [2, 4, 5]
    with pytest.raises(NotFound):
        await read(client, 0, 1, 1)
    assert [f.min_txid for f in await client.ltx_files(1)] == [1]

    await client.delete_all()
    assert await client.ltx_files(0) == []
    assert await client.ltx_files(1) == []
    # The replica stays usable after delete_all.
    await put(client, 0, 6, 6, ltx_bytes(seed=6))
    assert [f.min_txid for f in await client.ltx_files(0)] == [6]


async def test_names_that_are_not_ltx_files_are_ignored(client: Any) -> None:
    await put(client, 0, 1, 1, ltx_bytes())
    for name in (
        "notes.txt",
        "0000000000000002-0000000000000002.ltx.tmp",
        "00000000000003-3.ltx",
        "0000000000000004-0000000000000004.LTX",
        "sub/0000000000000005-0000000000000005.ltx",
    ):
        await raw_put(client, 0, name, b"junk")
    assert [(f.min_txid, f.max_txid) for f in await client.ltx_files(0)] == [(1, 1)]
    assert [(f.min_txid, f.max_txid) for f in await client.ltx_files(0, use_metadata=True)] == [(1, 1)]


async def test_concurrent_writers_of_different_files(client: Any) -> None:
    blobs = {n: ltx_bytes(size=20_000 + n, seed=n) for n in range(1, 13)}
    await asyncio.gather(*(put(client, 0, n, n, b) for n, b in blobs.items()))
    files = await client.ltx_files(0)
    assert [(f.min_txid, f.size) for f in files] == [(n, len(b)) for n, b in blobs.items()]
    got = await asyncio.gather(*(read_ltx_file(client, f) for f in files))
    assert got == list(blobs.values())


async def test_reader_never_sees_a_partial_object(client: Any) -> None:
    blob = ltx_bytes(size=24 << 20, seed=1)
    seen: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            for f in await client.ltx_files(0):
                assert f.size == len(blob), "listed before complete"
                try:
                    head = await read(client, 0, 1, 1, offset=len(blob) - 10)
                except NotFound:
                    continue
                assert head == blob[-10:]
                seen.append(f.size)
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        await put(client, 0, 1, 1, blob)
    finally:
        done.set()
    await watcher
    files = await client.ltx_files(0)
    assert [f.size for f in files] == [len(blob)]


def _peak_rss_reset() -> None:
    # Writing 5 resets VmHWM (Linux >= 4.0), so the peak below belongs to this test alone.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(field)


@pytest.mark.slow
async def test_large_object_is_streamed(client: Any) -> None:
    size = 200 << 20
    with tempfile.TemporaryFile() as src:
        head = ltx_bytes(size=100)
        src.write(head)
        chunk = os.urandom(1 << 20)
        digest = hashlib.sha256(head)
        while src.tell() < size:
            part = chunk[: size - src.tell()]
            src.write(part)
            digest.update(part)
        src.seek(size - 1000)
        tail = src.read(1000)
        src.seek(0)
        _peak_rss_reset()
        base = _rss("VmRSS")
        info = await client.write_ltx_file(9, 1, 100, src)
        assert info.size == size

    got = hashlib.sha256()
    n = 0
    async for part in client.open_ltx_file(9, 1, 100):
        got.update(part)
        n += len(part)
    assert (n, got.hexdigest()) == (size, digest.hexdigest())
    assert [f.size for f in await client.ltx_files(9)] == [size]
    assert await read(client, 9, 1, 100, offset=size - 1000, size=1000) == tail
    # Neither direction may hold the object in memory (the bound leaves room for SDK buffers).
    assert _rss("VmHWM") - base < 100 << 20
