"""Google Cloud Storage replicas (google-cloud-storage): `<path>/ltx/<level>/<min>-<max>.ltx`.

The header timestamp goes into the object metadata `litestream-timestamp`. Credentials come from
the environment as for every Google client (`GOOGLE_APPLICATION_CREDENTIALS`, workload identity);
`STORAGE_EMULATOR_HOST` points the client at an emulator, anonymously.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, BinaryIO

from . import ConfigError, NotFound, PreconditionFailed, StorageError, Transient, parse_replica_url
from .blob import BlobReplicaClient

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


class GCSReplicaClient(BlobReplicaClient):
    """Replica in a GCS bucket."""

    type = "gs"
    _translate = staticmethod(translate)

    def __init__(self, bucket: str, path: str, url: str) -> None:
        super().__init__(path, url, root=f"bucket {bucket!r}", service="GCS")
        self.bucket = bucket

    @property
    def bucket_handle(self) -> Any:
        """The SDK's bucket object, built on first use (the SDK is imported only then)."""
        return self.handle

    def _connect(self) -> Any:
        from google.cloud import storage

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            client = storage.Client(project="emulator", credentials=AnonymousCredentials())
        else:
            client = storage.Client()
        return client.bucket(self.bucket)

    def _disconnect(self, handle: Any) -> None:
        handle.client.close()

    # --- BlobReplicaClient hooks ----------------------------------------------------------------

    async def _probe(self) -> None:
        await self._run("bucket", lambda: self.bucket_handle.reload(timeout=10, retry=None))

    def _list(self, prefix: str, seek: int) -> Iterator[tuple[str, int, datetime]]:
        # The listing carries each object's metadata, so the header timestamp costs nothing.
        for blob in self.bucket_handle.client.list_blobs(self.bucket, prefix=prefix):
            yield blob.name, blob.size, self._created(blob.metadata, blob.time_created)

    def _list_names(self, prefix: str) -> list[str]:
        return [b.name for b in self.bucket_handle.client.list_blobs(self.bucket, prefix=prefix)]

    def _download(self, key: str, offset: int, size: int | None) -> Iterator[bytes]:
        blob = self.bucket_handle.get_blob(key)
        if blob is None:
            raise NotFound(f"{self.url}: {key}: no such LTX file")
        end = blob.size if size is None else min(blob.size, offset + size)
        return self._ranges(blob, offset, end)

    @staticmethod
    def _ranges(blob: Any, start: int, end: int) -> Iterator[bytes]:
        # Pinning the generation makes every range come from the same version of the object.
        for pos in range(start, end, TRANSFER_CHUNK):
            yield blob.download_as_bytes(
                start=pos, end=min(end, pos + TRANSFER_CHUNK) - 1, if_generation_match=blob.generation
            )

    def _upload(self, key: str, src: BinaryIO, size: int, metadata: dict[str, str]) -> None:
        blob = self.bucket_handle.blob(key, chunk_size=TRANSFER_CHUNK)
        blob.metadata = metadata
        # A GCS object becomes visible only once its upload is finalised: atomic for readers.
        # Generation 0: only if no live object has this name.
        blob.upload_from_file(src, size=size, content_type="application/octet-stream", if_generation_match=0)

    def _delete_objects(self, keys: list[str]) -> None:
        from google.api_core.exceptions import NotFound as GoogleNotFound

        for key in keys:
            with contextlib.suppress(GoogleNotFound):
                self.bucket_handle.delete_blob(key)

    # --- lease object: generation preconditions ----------------------------------------------

    def _read_lock(self) -> tuple[bytes, str] | None:
        blob = self.bucket_handle.get_blob(self.lock_key)
        if blob is None:
            return None
        # Pinned to the generation just looked up: a lease replaced in between reads as NotFound
        # (no lease), never as one generation's body under another's number.
        return blob.download_as_bytes(if_generation_match=blob.generation), str(blob.generation)

    async def write_lock(self, body: bytes, if_match: str | None) -> str:
        def write() -> str:
            blob = self.bucket_handle.blob(self.lock_key)
            # Generation 0 means "only if there is no live object" (GCS's If-None-Match).
            blob.upload_from_string(body, content_type="application/json", if_generation_match=int(if_match or 0))
            return str(blob.generation)

        return await self._run(self.lock_key, write)

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
