"""Azure Blob Storage replicas (azure-storage-blob): `<path>/ltx/<level>/<min>-<max>.ltx`.

URL `abs://[account@]container/path`; the header timestamp goes into the blob metadata
`litestreamtimestamp` (Azure metadata names cannot contain dashes).
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

METADATA_TIMESTAMP = "litestreamtimestamp"
BLOCK_SIZE = 4 << 20  # blocks are uploaded (and buffered) one at a time per worker
UPLOAD_CONCURRENCY = 4


def from_settings(settings: Mapping[str, Any]) -> ABSReplicaClient:
    """`abs://[account@]container/path`, plus `account-name`, `account-key`, `sas-token`, `endpoint`."""
    url = str(settings.get("url") or "")
    account, container, path, query = "", str(settings.get("bucket") or ""), str(settings.get("path") or ""), {}
    if url:
        u = parse_replica_url(url)
        account, container, path, query = u.username or "", u.host, u.path, u.query
    account = str(settings.get("account-name") or query.get("accountName") or account)
    if not container:
        raise ConfigError("abs replica: a container is required (url: abs://[ACCOUNT@]CONTAINER/PATH)")
    if not account:
        raise ConfigError(
            f"abs replica {url or container}: an account name is required (abs://ACCOUNT@... or account-name:)"
        )
    return ABSReplicaClient(
        account=account,
        container=container,
        path=path.strip("/"),
        url=url or f"abs://{account}@{container}/{path.strip('/')}",
        endpoint=str(settings.get("endpoint") or query.get("endpoint") or f"https://{account}.blob.core.windows.net/"),
        account_key=str(settings.get("account-key") or os.environ.get("LITESTREAM_AZURE_ACCOUNT_KEY") or ""),
        sas_token=str(settings.get("sas-token") or os.environ.get("LITESTREAM_AZURE_SAS_TOKEN") or ""),
    )


def translate(exc: BaseException, what: str) -> StorageError:
    """Map azure-core exceptions onto the storage error types."""
    from azure.core import exceptions as ae

    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, ae.ResourceNotFoundError):
        return NotFound(f"{what}: not found")
    if isinstance(exc, ae.ResourceExistsError | ae.ResourceModifiedError):
        return PreconditionFailed(f"{what}: precondition failed")
    if isinstance(exc, ae.ClientAuthenticationError):
        return StorageError(f"{what}: access denied: check the credentials (account-key or sas-token)")
    if isinstance(exc, ae.HttpResponseError):
        status = exc.status_code or 0
        if status in (408, 429) or status >= 500:
            return Transient(f"{what}: HTTP {status} {exc.reason}")
        if status == 412:
            return PreconditionFailed(f"{what}: precondition failed")
        if status in (401, 403):
            return StorageError(f"{what}: access denied: check the credentials (account-key or sas-token)")
        return StorageError(f"{what}: HTTP {status} {exc.reason}")
    if isinstance(exc, ae.ServiceRequestError | ae.ServiceResponseError | ConnectionError | TimeoutError):
        return Transient(f"{what}: {exc}")
    return StorageError(f"{what}: {type(exc).__name__}: {exc}")


class ABSReplicaClient:
    """Replica in an Azure Blob Storage container."""

    type = "abs"

    def __init__(
        self, *, account: str, container: str, path: str, url: str, endpoint: str, account_key: str, sas_token: str
    ) -> None:
        self.account = account
        self.container_name = container
        self.path = path
        self.url = url.split("?", 1)[0]
        self.endpoint = endpoint
        self._account_key = account_key
        self._sas_token = sas_token
        self._container: Any = None

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
    def container(self) -> Any:
        """The SDK's container client, built on first use (the SDK is imported only here)."""
        if self._container is None:
            from azure.storage.blob import BlobServiceClient

            credential: Any = None
            if self._account_key:
                credential = {"account_name": self.account, "account_key": self._account_key}
            elif self._sas_token:
                credential = self._sas_token
            else:
                # No key: Azure AD (managed identity, workload identity, az login), as Litestream does.
                try:
                    from azure.identity import DefaultAzureCredential
                except ImportError:
                    raise ConfigError(
                        f"abs replica {self.url}: set account-key or sas-token "
                        "(or install azure-identity for Azure AD credentials)"
                    ) from None
                credential = DefaultAzureCredential()
            service = BlobServiceClient(
                self.endpoint,
                credential=credential,
                max_single_put_size=BLOCK_SIZE,
                max_block_size=BLOCK_SIZE,
                connection_timeout=10,
                # The SDK's default backoff starts at 15 s: far too slow to report a dead endpoint.
                retry_total=3,
                initial_backoff=0.5,
                increment_base=2,
            )
            self._container = service.get_container_client(self.container_name)
        return self._container

    async def _run(self, what: str, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as exc:
            raise translate(exc, f"{self.url}: {what}") from exc

    async def init(self) -> None:
        """Check the container exists and the credentials may use it."""
        try:
            await self._run("container", lambda: self.container.get_container_properties())
        except NotFound:
            raise StorageError(f"abs replica {self.url}: container {self.container_name!r} does not exist") from None
        except Transient as exc:
            raise StorageError(f"abs replica {self.url}: cannot reach {self.endpoint}: {exc}") from None
        except StorageError as exc:
            raise StorageError(f"abs replica {exc}") from None

    async def ltx_files(self, level: int, seek: int = 0, use_metadata: bool = False) -> list[FileInfo]:
        prefix = self.level_prefix(level)

        def listing() -> list[FileInfo]:
            # The listing carries each blob's metadata, so the header timestamp costs nothing.
            entries = [
                (
                    blob.name[len(prefix) :],
                    blob.size,
                    parse_timestamp(stamp)
                    if (stamp := (blob.metadata or {}).get(METADATA_TIMESTAMP))
                    else blob.creation_time,
                )
                for blob in self.container.list_blobs(name_starts_with=prefix, include=["metadata"])
            ]
            return select_ltx_files(level, entries, seek)

        return await self._run(f"list {prefix}", listing)  # type: ignore[no-any-return]

    def open_ltx_file(
        self, level: int, min_txid: int, max_txid: int, offset: int = 0, size: int | None = None
    ) -> AsyncIterator[bytes]:
        key = self.ltx_key(level, min_txid, max_txid)

        def chunks() -> Iterator[bytes]:
            blob = self.container.get_blob_client(key)
            props = blob.get_blob_properties()
            if size == 0 or offset >= props.size:
                return iter(())
            # Pinning the ETag makes every chunk come from the same version of the blob.
            stream = blob.download_blob(offset=offset, length=size, etag=props.etag, match_condition=_if_match())
            return iter(stream.chunks())

        return iterate_in_thread(chunks, lambda exc: translate(exc, f"{self.url}: {key}"))

    async def write_ltx_file(self, level: int, min_txid: int, max_txid: int, src: BinaryIO) -> FileInfo:
        key = self.ltx_key(level, min_txid, max_txid)

        def upload() -> FileInfo:
            created = header_timestamp(src)
            start = src.tell()
            size = src.seek(0, os.SEEK_END) - start
            src.seek(start)
            # Staged blocks stay invisible until the block list is committed: atomic for readers.
            self.container.upload_blob(
                key,
                src,
                length=size,
                overwrite=True,
                metadata={METADATA_TIMESTAMP: format_timestamp(created)},
                max_concurrency=UPLOAD_CONCURRENCY,
            )
            return FileInfo(level, min_txid, max_txid, size, created)

        return await self._run(f"upload {key}", upload)  # type: ignore[no-any-return]

    async def delete_ltx_files(self, files: list[FileInfo]) -> None:
        await self._run("delete", self._delete, [self.ltx_key(f.level, f.min_txid, f.max_txid) for f in files])

    def _delete(self, keys: list[str]) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        for key in keys:
            try:
                self.container.delete_blob(key)
            except ResourceNotFoundError:
                pass

    async def delete_all(self) -> None:
        prefix = posixpath.join(self.path, "ltx") + "/"

        def names() -> list[str]:
            return [b.name for b in self.container.list_blobs(name_starts_with=prefix)]

        await self._run("delete", self._delete, await self._run(f"list {prefix}", names))

    async def close(self) -> None:
        """Close the HTTP pipeline."""
        if self._container is not None:
            self._container.close()
            self._container = None

    # --- lease object: ETag conditions ---------------------------------------------------------

    async def read_lock(self) -> tuple[bytes, str] | None:
        def read() -> tuple[bytes, str]:
            stream = self.container.download_blob(self.lock_key)
            return stream.readall(), str(stream.properties.etag)

        try:
            return await self._run(self.lock_key, read)  # type: ignore[no-any-return]
        except NotFound:
            return None

    async def write_lock(self, body: bytes, if_match: str | None) -> str:
        cond: dict[str, Any] = (
            {"overwrite": False}
            if if_match is None
            else {"overwrite": True, "etag": if_match, "match_condition": _if_match()}
        )
        blob = self.container.get_blob_client(self.lock_key)
        out = await self._run(self.lock_key, blob.upload_blob, body, **cond)
        return str(out["etag"])

    async def delete_lock(self, if_match: str) -> None:
        try:
            await self._run(
                self.lock_key, self.container.delete_blob, self.lock_key, etag=if_match, match_condition=_if_match()
            )
        except NotFound:
            return
        except PreconditionFailed:
            # Azure answers a conditional delete of a missing blob with 412, not 404.
            if await self.read_lock() is not None:
                raise


def _if_match() -> Any:
    from azure.core import MatchConditions

    return MatchConditions.IfNotModified
