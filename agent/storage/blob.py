"""What the object stores reached through a blocking SDK (S3, GCS, Azure Blob) have in common.

Every SDK call blocks, so it runs in a worker thread and its exceptions go through the backend's
`translate`. The protocol's algorithms live here once: the key layout, reading the header timestamp
and size before an upload, listing, deleting, the lease read, `init`'s messages, closing. A backend
supplies its SDK handle and one hook per request (`_upload`, `_download`, `_list`, ...). Like the
backends, this module imports no SDK.
"""

from __future__ import annotations

import abc
import asyncio
import os
import posixpath
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, BinaryIO, TypeVar

from . import (
    SNAPSHOT_LEVEL,
    FileInfo,
    NotFound,
    PreconditionFailed,
    StorageError,
    Transient,
    format_ltx_name,
    format_timestamp,
    header_timestamp,
    parse_timestamp,
    select_ltx_files,
    settle_existing,
)
from .retry import iterate_in_thread

T = TypeVar("T")


class BlobReplicaClient(abc.ABC):
    """Base of the blocking-SDK replica clients: `<path>/ltx/<level>/<min>-<max>.ltx` unless overridden."""

    type: str
    # The object metadata name that carries the LTX header timestamp (Litestream's, by default).
    metadata_timestamp = "litestream-timestamp"

    def __init__(self, path: str, url: str, *, root: str, service: str) -> None:
        """`root` names the bucket or container (`bucket 'b'`), `service` what serves it: for `init`'s messages."""
        self.path = path
        self.url = url.split("?", 1)[0]  # the query may carry keys: never echo it
        self._root = root
        self._service = service
        self._handle: Any = None
        self._handle_lock = threading.Lock()  # worker threads may ask for the handle at once

    def __repr__(self) -> str:
        return self.url

    # --- keys -------------------------------------------------------------------------------

    def level_prefix(self, level: int) -> str:
        return posixpath.join(self.path, "ltx", str(level)) + "/"

    def ltx_key(self, level: int, min_txid: int, max_txid: int) -> str:
        return self.level_prefix(level) + format_ltx_name(min_txid, max_txid)

    @property
    def lock_key(self) -> str:
        return posixpath.join(self.path, "lock.json")

    @property
    def data_prefix(self) -> str:
        """The prefix `delete_all` empties (the lease object is spared even when it lies below)."""
        return posixpath.join(self.path, "ltx") + "/"

    @property
    def levels_prefix(self) -> str:
        """A prefix every level's files share, with few other keys below it (`all_ltx_files`)."""
        return self.data_prefix

    # --- the SDK ----------------------------------------------------------------------------

    @property
    def handle(self) -> Any:
        """The SDK's client object, built on first use: the SDK is imported only then."""
        if self._handle is None:
            with self._handle_lock:
                if self._handle is None:
                    self._handle = self._connect()
        return self._handle

    @abc.abstractmethod
    def _connect(self) -> Any:
        """Build the SDK handle."""

    def _disconnect(self, handle: Any) -> None:
        """Release the handle's connections."""
        handle.close()

    @staticmethod
    @abc.abstractmethod
    def _translate(exc: BaseException, what: str) -> StorageError:
        """The backend module's `translate`: SDK exception -> storage error naming `what`."""

    async def _run(self, what: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` in a worker thread; its errors become storage errors naming `<url>: <what>`."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as exc:
            raise self._translate(exc, f"{self.url}: {what}") from exc

    def _created(self, metadata: Mapping[str, str] | None, fallback: datetime) -> datetime:
        """The header timestamp stored in an object's metadata, else `fallback` (the store's own time)."""
        stamp = (metadata or {}).get(self.metadata_timestamp)
        return parse_timestamp(stamp) if stamp else fallback

    # --- init ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _probe(self) -> None:
        """Touch the bucket or container, raising the storage error types."""

    def _init_failure(self, exc: StorageError) -> str:
        """The rest of `init`'s message after `<type> replica ` for any other error."""
        return str(exc)

    # --- hooks: blocking SDK requests (called in a worker thread) --------------------------

    @abc.abstractmethod
    def _list(self, prefix: str, seek: int) -> Iterable[tuple[str, int, datetime]]:
        """(key, size, created) of the objects below `prefix`; may skip keys below `<prefix><seek>`."""

    @abc.abstractmethod
    def _list_names(self, prefix: str) -> list[str]:
        """Every key below `prefix`."""

    @abc.abstractmethod
    def _download(self, key: str, offset: int, size: int | None) -> Iterator[bytes]:
        """The chunks of one object (a range when offset/size are given), all of one version."""

    @abc.abstractmethod
    def _upload(self, key: str, src: BinaryIO, size: int, metadata: dict[str, str]) -> None:
        """Store `size` bytes of `src` under `key` with `metadata`, invisible until complete, only
        if `key` does not exist yet (the store's error for that translates to PreconditionFailed)."""

    @abc.abstractmethod
    def _delete_objects(self, keys: list[str]) -> None:
        """Delete these objects (in as few requests as the store allows); missing ones are not an error."""

    @abc.abstractmethod
    def _read_lock(self) -> tuple[bytes, str] | None:
        """The lease object's body and version tag (None or NotFound when there is none)."""

    # --- ReplicaClient ----------------------------------------------------------------------

    async def init(self) -> None:
        """Check the bucket (or container) exists and the credentials may use it."""
        try:
            await self._probe()
        except NotFound:
            raise StorageError(f"{self.type} replica {self.url}: {self._root} does not exist") from None
        except Transient as exc:
            raise StorageError(f"{self.type} replica {self.url}: cannot reach {self._service}: {exc}") from None
        except StorageError as exc:
            raise StorageError(f"{self.type} replica {self._init_failure(exc)}") from None

    async def ltx_files(self, level: int, seek: int = 0, use_metadata: bool = False) -> list[FileInfo]:
        prefix = self.level_prefix(level)

        def listing() -> list[FileInfo]:
            entries = ((key[len(prefix) :], size, created) for key, size, created in self._list(prefix, seek))
            return select_ltx_files(level, entries, seek)

        return await self._run(f"list {prefix}", listing)

    async def all_ltx_files(self) -> dict[int, list[FileInfo]]:
        """Every level's files from one paged listing of `levels_prefix`, without a delimiter,
        instead of a listing per level (see `storage.ltx_files_by_level`). A key counts where the
        level's own listing would count it: directly below its level's prefix."""
        levels = {self.level_prefix(level): level for level in range(SNAPSHOT_LEVEL + 1)}
        prefix = self.levels_prefix

        def listing() -> dict[int, list[FileInfo]]:
            entries: dict[int, list[tuple[str, int, datetime]]] = {}
            for key, size, created in self._list(prefix, 0):
                head, _, name = key.rpartition("/")
                level = levels.get(head + "/")
                if level is not None:
                    entries.setdefault(level, []).append((name, size, created))
            found = {level: select_ltx_files(level, names) for level, names in entries.items()}
            return {level: files for level, files in sorted(found.items()) if files}

        return await self._run(f"list {prefix}", listing)

    def open_ltx_file(
        self, level: int, min_txid: int, max_txid: int, offset: int = 0, size: int | None = None
    ) -> AsyncIterator[bytes]:
        key = self.ltx_key(level, min_txid, max_txid)
        return iterate_in_thread(
            lambda: self._download(key, offset, size), lambda exc: self._translate(exc, f"{self.url}: {key}")
        )

    # --- Litestream 0.3's layout `<path>/generations/...`, read by restore ----------------------

    @property
    def _v3_base(self) -> str:
        """What precedes `generations/` in a 0.3 key (0.3 joined and cleaned the path: "" is the root)."""
        return posixpath.normpath(posixpath.join(self.path, "generations"))[: -len("generations")]

    async def v3_files(self) -> list[tuple[str, int, datetime]]:
        """(key relative to the replica path, size, created) of every object under `generations/`."""
        base = self._v3_base
        prefix = base + "generations/"

        def listing() -> list[tuple[str, int, datetime]]:
            return [(key[len(base) :], size, created) for key, size, created in self._list(prefix, 0)]

        return await self._run(f"list {prefix}", listing)

    def open_v3_file(self, key: str) -> AsyncIterator[bytes]:
        """Stream one object listed by `v3_files`."""
        full = self._v3_base + key
        return iterate_in_thread(
            lambda: self._download(full, 0, None), lambda exc: self._translate(exc, f"{self.url}: {full}")
        )

    async def write_ltx_file(self, level: int, min_txid: int, max_txid: int, src: BinaryIO) -> FileInfo:
        key = self.ltx_key(level, min_txid, max_txid)
        start = src.tell()

        def upload() -> FileInfo:
            created = header_timestamp(src)
            size = src.seek(0, os.SEEK_END) - start
            src.seek(start)
            self._upload(key, src, size, {self.metadata_timestamp: format_timestamp(created)})
            return FileInfo(level, min_txid, max_txid, size, created)

        try:
            return await self._run(f"upload {key}", upload)
        except PreconditionFailed:
            src.seek(start)
            return await settle_existing(self, level, min_txid, max_txid, src)

    async def delete_ltx_files(self, files: list[FileInfo]) -> None:
        await self._delete_keys([self.ltx_key(f.level, f.min_txid, f.max_txid) for f in files])

    async def delete_all(self) -> None:
        prefix = self.data_prefix
        keys = await self._run(f"list {prefix}", self._list_names, prefix)
        # The lease object is not replica data: a holder that resets the replica keeps its lease.
        await self._delete_keys([key for key in keys if key != self.lock_key])

    async def _delete_keys(self, keys: list[str]) -> None:
        await self._run("delete", self._delete_objects, keys)

    async def close(self) -> None:
        """Release the SDK's connections; the client may not be used afterwards."""
        if self._handle is not None:
            self._disconnect(self._handle)
            self._handle = None

    async def read_lock(self) -> tuple[bytes, str] | None:
        """The lease object's body and version tag, or None when there is none."""
        try:
            return await self._run(self.lock_key, self._read_lock)
        except NotFound:
            return None
