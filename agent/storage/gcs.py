"""Google Cloud Storage replicas (google-cloud-storage): `<path>/ltx/<level>/<min>-<max>.ltx`.

The header timestamp goes into the object metadata `litestream-timestamp`. Credentials come from
the environment as for every Google client (`GOOGLE_APPLICATION_CREDENTIALS`, workload identity);
`STORAGE_EMULATOR_HOST` points the client at an emulator, anonymously.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, BinaryIO

from . import (
    ConfigError,
    FileInfo,
    NotFound,
    PreconditionFailed,
    StorageError,
    Transient,
    format_ltx_name,
    format_timestamp,
    header_timestamp,
    parse_replica_url,
    parse_timestamp,
    select_ltx_files,
)
from .retry import iterate_in_thread

METADATA_TIMESTAMP = "litestream-timestamp"
# Uploads and ranged downloads move (and buffer) one chunk at a time; a multiple of 256 KiB for GCS.
TRANSFER_CHUNK = 8 << 20


def from_settings(settings: Mapping[str, Any]) -> GCSReplicaClient:
    """`gs://bucket/path`, or `type: gs` with `bucket:` and `path:`."""
    url = str(settings.get("url") or "")
    if url:
        u = parse_replica_url(url)
        bucket, path = u.host, u.path.strip("/")
    else:
        bucket, path = str(settings.get("bucket") or ""), str(settings.get("path") or "").strip("/")
    if not bucket:
        raise ConfigError("gs replica: a bucket is required (url: gs://BUCKET/PATH or bucket:)")
    return GCSReplicaClient(bucket, path, url or f"gs://{bucket}/{path}")


def translate(exc: BaseException, what: str) -> StorageError:
    """Map google-api-core / transport exceptions onto the storage error types."""
    from google.api_core import exceptions as ge
    from google.auth import exceptions as ae

    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, ge.NotFound):
        return NotFound(f"{what}: not found")
    if isinstance(exc, ge.PreconditionFailed):
        return PreconditionFailed(f"{what}: precondition failed")
    if isinstance(exc, ge.TooManyRequests | ge.ServerError | ge.RetryError):
        return Transient(f"{what}: {exc}")
    if isinstance(exc, ge.Unauthorized | ge.Forbidden | ae.DefaultCredentialsError | ae.RefreshError):
        return StorageError(f"{what}: access denied: check the credentials (GOOGLE_APPLICATION_CREDENTIALS)")
    if isinstance(exc, ge.GoogleAPICallError):
        return StorageError(f"{what}: {exc}")
    if isinstance(exc, ConnectionError | TimeoutError | OSError) or "ConnectionError" in type(exc).__name__:
        return Transient(f"{what}: {exc}")
    return StorageError(f"{what}: {type(exc).__name__}: {exc}")


class GCSReplicaClient:
    """Replica in a GCS bucket."""

    type = "gs"

    def __init__(self, bucket: str, path: str, url: str) -> None:
        self.bucket = bucket
        self.path = path
        self.url = url.split("?", 1)[0]
        self._bucket: Any = None

    def __repr__(self) -> str:
        return self.url

    def level_prefix(self, level: int) -> str:
        return posixpath.join(self.path, "ltx", str(level)) + "/"

    def ltx_key(self, level: int, min_txid: int, max_txid: int) -> str:
        return self.level_prefix(level) + format_ltx_name(min_txid, max_txid)

    @property
    def lock_key(self) -> str:
        return posixpath.join(self.path, "lock.json")

    @property
    def bucket_handle(self) -> Any:
        """The SDK's bucket object, built on first use (the SDK is imported only here)."""
        if self._bucket is None:
            from google.cloud import storage

            if os.environ.get("STORAGE_EMULATOR_HOST"):
                from google.auth.credentials import AnonymousCredentials

                client = storage.Client(project="emulator", credentials=AnonymousCredentials())
            else:
                client = storage.Client()
            self._bucket = client.bucket(self.bucket)
        return self._bucket

    async def _run(self, what: str, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as exc:
            raise translate(exc, f"{self.url}: {what}") from exc

    async def init(self) -> None:
        """Check the bucket exists and is readable with the ambient credentials."""
        try:
            await self._run("bucket", lambda: self.bucket_handle.reload(timeout=10, retry=None))
        except NotFound:
            raise StorageError(f"gs replica {self.url}: bucket {self.bucket!r} does not exist") from None
        except Transient as exc:
            raise StorageError(f"gs replica {self.url}: cannot reach GCS: {exc}") from None
        except StorageError as exc:
            raise StorageError(f"gs replica {exc}") from None

    async def ltx_files(self, level: int, seek: int = 0, use_metadata: bool = False) -> list[FileInfo]:
        prefix = self.level_prefix(level)

        def listing() -> list[FileInfo]:
            # The listing carries each object's metadata, so the header timestamp costs nothing.
            entries = [
                (
                    blob.name[len(prefix) :],
                    blob.size,
                    parse_timestamp(stamp)
                    if (stamp := (blob.metadata or {}).get(METADATA_TIMESTAMP))
                    else blob.time_created,
                )
                for blob in self.bucket_handle.client.list_blobs(self.bucket, prefix=prefix)
            ]
            return select_ltx_files(level, entries, seek)

        return await self._run(f"list {prefix}", listing)  # type: ignore[no-any-return]

    def open_ltx_file(
        self, level: int, min_txid: int, max_txid: int, offset: int = 0, size: int | None = None
    ) -> AsyncIterator[bytes]:
        key = self.ltx_key(level, min_txid, max_txid)

        def chunks() -> Iterator[bytes]:
            blob = self.bucket_handle.get_blob(key)
            if blob is None:
                raise NotFound(f"{self.url}: {key}: no such LTX file")
            end = blob.size if size is None else min(blob.size, offset + size)
            return self._ranges(blob, offset, end)

        return iterate_in_thread(chunks, lambda exc: translate(exc, f"{self.url}: {key}"))

    @staticmethod
    def _ranges(blob: Any, start: int, end: int) -> Iterator[bytes]:
        # Pinning the generation makes every range come from the same version of the object.
        for pos in range(start, end, TRANSFER_CHUNK):
            yield blob.download_as_bytes(
                start=pos, end=min(end, pos + TRANSFER_CHUNK) - 1, if_generation_match=blob.generation
            )

    async def write_ltx_file(self, level: int, min_txid: int, max_txid: int, src: BinaryIO) -> FileInfo:
        key = self.ltx_key(level, min_txid, max_txid)

        def upload() -> FileInfo:
            created = header_timestamp(src)
            start = src.tell()
            size = src.seek(0, os.SEEK_END) - start
            src.seek(start)
            blob = self.bucket_handle.blob(key, chunk_size=TRANSFER_CHUNK)
            blob.metadata = {METADATA_TIMESTAMP: format_timestamp(created)}
            # A GCS object becomes visible only once its upload is finalised: atomic for readers.
            blob.upload_from_file(src, size=size, content_type="application/octet-stream")
            return FileInfo(level, min_txid, max_txid, size, created)

        return await self._run(f"upload {key}", upload)  # type: ignore[no-any-return]

    async def delete_ltx_files(self, files: list[FileInfo]) -> None:
        await self._run("delete", self._delete, [self.ltx_key(f.level, f.min_txid, f.max_txid) for f in files])

    def _delete(self, keys: list[str]) -> None:
        from google.api_core.exceptions import NotFound as GoogleNotFound

        for key in keys:
            try:
                self.bucket_handle.delete_blob(key)
            except GoogleNotFound:
                pass

    async def delete_all(self) -> None:
        prefix = posixpath.join(self.path, "ltx") + "/"

        def names() -> list[str]:
            return [b.name for b in self.bucket_handle.client.list_blobs(self.bucket, prefix=prefix)]

        await self._run("delete", self._delete, await self._run(f"list {prefix}", names))

    async def close(self) -> None:
        """Drop the HTTP session."""
        if self._bucket is not None:
            self._bucket.client.close()
            self._bucket = None

    # --- lease object: generation preconditions ----------------------------------------------

    async def read_lock(self) -> tuple[bytes, str] | None:
        def read() -> tuple[bytes, str] | None:
            blob = self.bucket_handle.get_blob(self.lock_key)
            if blob is None:
                return None
            return blob.download_as_bytes(if_generation_match=blob.generation), str(blob.generation)

        return await self._run(self.lock_key, read)  # type: ignore[no-any-return]

    async def write_lock(self, body: bytes, if_match: str | None) -> str:
        def write() -> str:
            blob = self.bucket_handle.blob(self.lock_key)
            # Generation 0 means "only if there is no live object" (GCS's If-None-Match).
            blob.upload_from_string(body, content_type="application/json", if_generation_match=int(if_match or 0))
            return str(blob.generation)

        return await self._run(self.lock_key, write)  # type: ignore[no-any-return]

    async def delete_lock(self, if_match: str) -> None:
        def delete() -> None:
            from google.api_core.exceptions import NotFound as GoogleNotFound

            blob = self.bucket_handle.get_blob(self.lock_key)
            if blob is None:
                return
            # Checked here as well: emulators ignore preconditions on DELETE (GCS itself does not).
            if str(blob.generation) != if_match:
                raise PreconditionFailed(f"{self.url}: {self.lock_key}: lease object changed")
            try:
                blob.delete(if_generation_match=int(if_match))
            except GoogleNotFound:
                pass

        await self._run(self.lock_key, delete)
