"""Restore of a Litestream 0.3 replica (`generations/...`) from S3, GCS, Azure Blob and SFTP, chosen
automatically as from a file replica: the layout is uploaded as 0.3 wrote it, then restored through
a config naming the replica."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from helpers import lifeboat, no_traceback, ok, rows
from legacy_v3 import GEN, build_v3
from replica_helpers import NewReplica, remote, write_yaml

REMOTE_BACKENDS = ["s3", "gs", "abs", "sftp"]  # Litestream 0.3 had no NATS replica


async def _upload_v3(block: dict[str, Any], root: Path) -> None:
    """Every file of the 0.3 replica at `root` as an object under the replica's path (for SFTP, into
    the directory the local test server serves)."""
    if str(block["url"]).startswith("sftp://"):
        shutil.copytree(root, urlsplit(str(block["url"])).path)
        return
    async with remote(block) as client:
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            key = client.path.strip("/") + "/" + f.relative_to(root).as_posix()
            with open(f, "rb") as src:
                client._upload(key, src, f.stat().st_size, {})


async def _replica_with_v3(new_replica: NewReplica, backend: str, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(source database, 0.3 replica root, config restoring `tmp_path/out.db` from the uploaded copy)."""
    src, root = build_v3(tmp_path)
    block = await new_replica(backend)
    await _upload_v3(block, root)
    return src, root, write_yaml(tmp_path / "litestream.yml", tmp_path / "out.db", block)


@pytest.mark.parametrize("backend", REMOTE_BACKENDS)
async def test_v3_replica_restores_from_remote_backend(new_replica: NewReplica, backend: str, tmp_path: Path) -> None:
    src, _, cfg = await _replica_with_v3(new_replica, backend, tmp_path)
    out = tmp_path / "out.db"
    proc = ok(lifeboat("restore", "-integrity-check", "full", "-config", str(cfg), str(out)))
    no_traceback(proc.stderr)
    assert rows(out) == rows(src)
    assert {r[1] for r in rows(out)} == set(range(1, 13))


async def test_v3_corrupt_segment_on_s3_names_it(new_replica: NewReplica, tmp_path: Path) -> None:
    _, root = build_v3(tmp_path)
    seg = next((root / "generations" / GEN / "wal").glob("00000000_0000[1-9a-f]*"))
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    block = await new_replica("s3")
    await _upload_v3(block, root)
    cfg = write_yaml(tmp_path / "litestream.yml", tmp_path / "out.db", block)
    proc = lifeboat("restore", "-config", str(cfg), str(tmp_path / "out.db"))
    assert proc.returncode == 1, proc.stderr
    assert f"generations/{GEN}/wal/{seg.name}" in proc.stderr and "corrupt LZ4" in proc.stderr, proc.stderr
    no_traceback(proc.stderr)
    assert not (tmp_path / "out.db").exists() and not (tmp_path / "out.db.tmp").exists()
