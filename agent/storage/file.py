"""Directory replica: `<path>/ltx/<level>/<min>-<max>.ltx`, mtime = LTX header timestamp."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from . import (
    SNAPSHOT_LEVEL,
    ConfigError,
    FileInfo,
    NotFound,
    PreconditionFailed,
    SealedWriter,
    format_ltx_name,
    header_timestamp,
    parse_ltx_name,
    parse_replica_url,
    settle_existing,
)

CHUNK = 1 << 20


class SealedFile(io.FileIO):
    """A file opened for reading whose bytes never change again (a local L0 file, published by
    rename once complete and fsynced). A directory replica on the same file system links it instead
    of copying it: no second inode to allocate, no bytes to copy, no data to fsync again."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, "rb")


def _mtime_ns(created: datetime) -> int:
    """An LTX header's timestamp (whole milliseconds) as a file's mtime."""
    return int(created.timestamp() * 1000) * 1_000_000


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


async def _chunks(path: Path, offset: int, size: int | None) -> AsyncIterator[bytes]:
    """The bytes of `path` from `offset` (`size` of them, or to the end), a chunk at a time."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
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


class FileReplicaClient:
    """Replica in a local (or mounted) directory."""

    type = "file"

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self._linkable = True  # until a link of a sealed file fails (another file system)

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

    async def all_ltx_files(self) -> dict[int, list[FileInfo]]:
        """Every level's files, scanned in one worker-thread call instead of one per level (see
        `storage.ltx_files_by_level`)."""

        def scan() -> dict[int, list[FileInfo]]:
            listings = {level: self._list(level, 0) for level in range(SNAPSHOT_LEVEL + 1)}
            return {level: files for level, files in listings.items() if files}

        return await asyncio.to_thread(scan)

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

    def open_ltx_file(
        self, level: int, min_txid: int, max_txid: int, offset: int = 0, size: int | None = None
    ) -> AsyncIterator[bytes]:
        return _chunks(self.ltx_path(level, min_txid, max_txid), offset, size)

    async def v3_files(self) -> list[tuple[str, int, datetime]]:
        """Every file under `<root>/generations/` (Litestream 0.3's layout), keys relative to the root."""

        def walk() -> list[tuple[str, int, datetime]]:
            out = []
            for dirpath, _dirs, files in os.walk(self.root / "generations"):
                for name in files:
                    try:
                        st = os.stat(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue
                    key = Path(dirpath, name).relative_to(self.root).as_posix()
                    out.append((key, st.st_size, datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=UTC)))
            return out

        return await asyncio.to_thread(walk)

    def open_v3_file(self, key: str) -> AsyncIterator[bytes]:
        """Stream one file listed by `v3_files`."""
        return _chunks(self.root / key, 0, None)

    async def write_ltx_file(self, level: int, min_txid: int, max_txid: int, src: BinaryIO) -> FileInfo:
        start = src.tell()
        try:
            return await asyncio.to_thread(self._write, level, min_txid, max_txid, src)
        except PreconditionFailed:
            src.seek(start)
            return await settle_existing(self, level, min_txid, max_txid, src)

    def sealed_writer(self) -> SealedWriter:
        """Links of local files, made from the caller's thread (see `storage.sealed_writer`)."""
        return self._link_sealed

    def _link_sealed(self, level: int, min_txid: int, max_txid: int, path: Path) -> FileInfo | None:
        """Publish the sealed local file at `path` as a hard link; None when this replica is on
        another file system: a copy is `write_ltx_file`'s, whose thread may wait on a slow mount
        without holding up the caller's captures."""
        if not self._linkable:
            return None
        with SealedFile(path) as src:
            created = header_timestamp(src)
            dest = self._destination(level, min_txid, max_txid)
            size = self._link(src, dest, _mtime_ns(created))
        return None if size is None else FileInfo(level, min_txid, max_txid, size, created)

    def _destination(self, level: int, min_txid: int, max_txid: int) -> Path:
        path = self.ltx_path(level, min_txid, max_txid)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _write(self, level: int, min_txid: int, max_txid: int, src: BinaryIO) -> FileInfo:
        created = header_timestamp(src)
        path = self._destination(level, min_txid, max_txid)
        ns = _mtime_ns(created)
        if isinstance(src, SealedFile) and src.tell() == 0:
            size = self._link(src, path, ns)
            if size is not None:
                return FileInfo(level, min_txid, max_txid, size, created)
        # A private temp name, published with link(2): that fails if the name exists, so a late
        # writer never replaces another agent's file (rename would).
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
                dst.flush()
                size = dst.tell()
                # Before the fsync, so that the fsync covers the timestamp too.
                os.utime(dst.fileno(), ns=(ns, ns))
                os.fsync(dst.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise PreconditionFailed(f"{path}: exists") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fsync_dir(path.parent)
        return FileInfo(level, min_txid, max_txid, size, created)

    def _link(self, src: SealedFile, path: Path, ns: int) -> int | None:
        """Publish `src` at `path` as a hard link; None when this file system cannot link it there
        (another device, no hard links), and the caller copies instead."""
        try:
            os.link(src.name, path)
        except FileExistsError:
            raise PreconditionFailed(f"{path}: exists") from None
        except OSError:
            self._linkable = False  # the same next time: sealed files go the copying way from now on
            return None
        # The bytes were fsynced before the local file was published; the new name and the
        # timestamp (one inode, so the local file's mtime follows) are made durable here.
        os.utime(path, ns=(ns, ns))
        fsync_dir(path.parent)
        return os.fstat(src.fileno()).st_size

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

    async def close(self) -> None:
        """Nothing to release: every operation opens and closes its own files."""

    # --- lease object -------------------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        return self.root / "lock.json"

    async def read_lock(self) -> tuple[bytes, str] | None:
        return await asyncio.to_thread(lock_read, _LocalLockFS(), str(self.lock_path))

    async def write_lock(self, body: bytes, if_match: str | None) -> str:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        return await asyncio.to_thread(lock_write, _LocalLockFS(), str(self.lock_path), body, if_match)

    async def delete_lock(self, if_match: str) -> None:
        await asyncio.to_thread(lock_delete, _LocalLockFS(), str(self.lock_path), if_match)


# Compare-and-swap of the lease object on a file system without conditional writes, shared with
# the SFTP backend. Two primitives are atomic on POSIX file systems and on OpenSSH's SFTP server:
# creating a name only if it is absent (link/rename without replace), and renaming a name away
# (only one of several concurrent renamers wins). A replace therefore first *claims* the current
# object by renaming it to a private name, compares it, and publishes the new body with an
# exclusive create. Two writers racing on one version can never both win. The one gap: while a
# claim is held the lock name is absent, so a writer that saw no lock at all can create one then,
# and the claimant loses (PreconditionFailed) and puts nothing back.


class LockFS(Protocol):
    """The blocking file operations `lock_write` needs (paths are the store's own)."""

    def read(self, path: str) -> bytes:
        """The whole file; FileNotFoundError when absent."""

    def create_exclusive(self, path: str, body: bytes) -> None:
        """Publish `body` at `path` complete, or raise FileExistsError if `path` exists."""

    def rename(self, src: str, dst: str) -> None:
        """Rename `src` to a fresh name `dst`; FileNotFoundError when `src` is absent."""

    def remove(self, path: str) -> None:
        """Delete `path`; FileNotFoundError when absent."""


def lock_tag(body: bytes) -> str:
    """Version tag of a lease body on stores without ETags: its content hash."""
    return hashlib.sha256(body).hexdigest()


def lock_read(fs: LockFS, path: str) -> tuple[bytes, str] | None:
    """The lease body and its tag, or None."""
    try:
        body = fs.read(path)
    except FileNotFoundError:
        return None
    return body, lock_tag(body)


def _claim(fs: LockFS, path: str, if_match: str) -> str:
    """Rename the current lease away if it still is version `if_match`; returns the claim's name."""
    claim = f"{path}.{uuid.uuid4().hex}.claim"
    try:
        fs.rename(path, claim)
    except FileNotFoundError:
        raise PreconditionFailed(f"{path}: lease object is gone") from None
    current = fs.read(claim)
    if lock_tag(current) != if_match:
        # Someone replaced it after our read: give theirs back (unless a newer one exists already).
        with contextlib.suppress(FileExistsError):
            fs.create_exclusive(path, current)
        fs.remove(claim)
        raise PreconditionFailed(f"{path}: lease object changed")
    return claim


def lock_write(fs: LockFS, path: str, body: bytes, if_match: str | None) -> str:
    """Conditional write of the lease object (see the block comment above)."""
    claim = None if if_match is None else _claim(fs, path, if_match)
    try:
        fs.create_exclusive(path, body)
    except FileExistsError:
        raise PreconditionFailed(f"{path}: lease object exists") from None
    finally:
        if claim is not None:
            fs.remove(claim)
    return lock_tag(body)


def lock_delete(fs: LockFS, path: str, if_match: str) -> None:
    """Conditional delete of the lease object; an absent one is already deleted."""
    try:
        claim = _claim(fs, path, if_match)
    except PreconditionFailed:
        if lock_read(fs, path) is None:
            return
        raise
    fs.remove(claim)


class _LocalLockFS:
    """LockFS on the local file system: exclusive create is a hard link of a complete temp file."""

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def create_exclusive(self, path: str, body: bytes) -> None:
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        finally:
            os.unlink(tmp)
        fsync_dir(os.path.dirname(path))

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def remove(self, path: str) -> None:
        os.unlink(path)
