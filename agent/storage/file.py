"""Directory replica: `<path>/ltx/<level>/<min>-<max>.ltx`, mtime = LTX header timestamp."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from . import ConfigError, FileInfo, NotFound, format_ltx_name, header_timestamp, parse_ltx_name, parse_replica_url

CHUNK = 1 << 20


def from_settings(settings: Mapping[str, Any]) -> FileReplicaClient:
    """`file:///abs/path`, a bare absolute path, or `type: file` with `path:`."""
    if settings.get("url"):
        path = parse_replica_url(str(settings["url"])).path
    else:
        path = str(settings.get("path") or "")
    if not path:
        raise ConfigError("file replica: a path is required (url: file:///abs/path or path:)")
    if not os.path.isabs(path):
        raise ConfigError(f"file replica: path {path!r} must be absolute")
    if ".." in Path(path).parts:
        raise ConfigError(f"file replica: path {path!r} must not contain '..'")
    return FileReplicaClient(path)


def fsync_dir(path: str | Path) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileReplicaClient:
    """Replica in a local (or mounted) directory."""

    type = "file"

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"file://{self.root}"

    def level_dir(self, level: int) -> Path:
        return self.root / "ltx" / str(level)

    def ltx_path(self, level: int, min_txid: int, max_txid: int) -> Path:
        return self.level_dir(level) / format_ltx_name(min_txid, max_txid)

    async def init(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)

    async def ltx_files(self, level: int, seek: int = 0, use_metadata: bool = False) -> list[FileInfo]:
        return await asyncio.to_thread(self._list, level, seek)

    def _list(self, level: int, seek: int) -> list[FileInfo]:
        out: list[FileInfo] = []
        try:
            entries = list(os.scandir(self.level_dir(level)))
        except FileNotFoundError:
            return out
        for entry in entries:
            txids = parse_ltx_name(entry.name)
            if txids is None or txids[0] < seek:
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            created = datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=UTC)
            out.append(FileInfo(level, txids[0], txids[1], st.st_size, created))
        out.sort(key=lambda f: (f.min_txid, f.max_txid))
        return out

    async def open_ltx_file(
        self, level: int, min_txid: int, max_txid: int, offset: int = 0, size: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self.ltx_path(level, min_txid, max_txid)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed in finally across yields
        except FileNotFoundError:
            raise NotFound(f"{path}: no such LTX file") from None
        try:
            f.seek(offset)
            remaining = size
            while remaining is None or remaining > 0:
                n = CHUNK if remaining is None else min(CHUNK, remaining)
                chunk = f.read(n)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            f.close()

    async def write_ltx_file(self, level: int, min_txid: int, max_txid: int, src: BinaryIO) -> FileInfo:
        return await asyncio.to_thread(self._write, level, min_txid, max_txid, src)

    def _write(self, level: int, min_txid: int, max_txid: int, src: BinaryIO) -> FileInfo:
        created = header_timestamp(src)
        path = self.ltx_path(level, min_txid, max_txid)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
            dst.flush()
            os.fsync(dst.fileno())
            size = dst.tell()
        ns = int(created.timestamp() * 1000) * 1_000_000
        os.utime(tmp, ns=(ns, ns))
        os.replace(tmp, path)
        fsync_dir(path.parent)
        return FileInfo(level, min_txid, max_txid, size, created)

    async def delete_ltx_files(self, files: list[FileInfo]) -> None:
        await asyncio.to_thread(self._delete, files)

    def _delete(self, files: list[FileInfo]) -> None:
        dirs = set()
        for info in files:
            path = self.ltx_path(info.level, info.min_txid, info.max_txid)
            try:
                path.unlink()
                dirs.add(path.parent)
            except FileNotFoundError:
                pass
        for d in dirs:
            fsync_dir(d)

    async def delete_all(self) -> None:
        await asyncio.to_thread(shutil.rmtree, self.root / "ltx", True)
