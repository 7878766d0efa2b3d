"""agent/storage/file.py: a local L0 file (`SealedFile`) reaches a directory replica on the same file
system as a hard link (no second inode, no copy, no second data fsync), on another file system as a
copy; either way with the LTX header's timestamp as mtime, and never over another writer's file."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import pytest
from lifeboat.agent import ltx
from lifeboat.agent.storage import PreconditionFailed
from lifeboat.agent.storage.file import FileReplicaClient, SealedFile

STAMP_MS = 1_700_000_000_123


def _local_l0(directory: Path, txid: int, fill: int = 0) -> Path:
    path = directory / f"{txid:016x}-{txid:016x}.ltx"
    header = ltx.Header(page_size=512, commit=1, min_txid=txid, max_txid=txid, timestamp=STAMP_MS)
    buf = io.BytesIO()
    ltx.encode(header, [(1, bytes([fill]) * 512)], buf)
    path.write_bytes(buf.getvalue())
    return path


async def _upload(client: FileReplicaClient, local: Path, txid: int) -> int:
    with SealedFile(local) as f:
        info = await client.write_ltx_file(0, txid, txid, f)
    return info.size


async def test_same_file_system_links_the_local_file(tmp_path: Path) -> None:
    local = _local_l0(tmp_path, 1)
    client = FileReplicaClient(str(tmp_path / "replica"))
    await client.init()
    size = await _upload(client, local, 1)
    remote = client.ltx_path(0, 1, 1)
    assert os.stat(remote).st_ino == os.stat(local).st_ino
    assert size == os.path.getsize(local)
    assert os.stat(remote).st_mtime_ns == STAMP_MS * 1_000_000
    assert [f.max_txid for f in await client.ltx_files(0)] == [1]
    assert not [n for n in os.listdir(remote.parent) if n.endswith(".tmp")]


async def test_other_file_system_copies(tmp_path: Path) -> None:
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's directory")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as meta:
        local = _local_l0(Path(meta), 2)
        client = FileReplicaClient(str(tmp_path / "replica"))
        await client.init()
        await _upload(client, local, 2)
        remote = client.ltx_path(0, 2, 2)
        assert remote.read_bytes() == local.read_bytes()
        assert os.stat(remote).st_nlink == 1
        assert os.stat(remote).st_mtime_ns == STAMP_MS * 1_000_000


async def test_link_never_replaces_an_existing_file(tmp_path: Path) -> None:
    client = FileReplicaClient(str(tmp_path / "replica"))
    await client.init()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ours = _local_l0(tmp_path / "a", 3, fill=1)
    theirs = _local_l0(tmp_path / "b", 3, fill=2)
    await _upload(client, theirs, 3)
    with pytest.raises(PreconditionFailed):
        with SealedFile(ours) as f:
            client._write(0, 3, 3, f)
    assert client.ltx_path(0, 3, 3).read_bytes() == theirs.read_bytes()
