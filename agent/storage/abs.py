"""Azure Blob Storage replicas (azure-storage-blob): `<path>/ltx/<level>/<min>-<max>.ltx`.

URL `abs://[account@]container/path`; the header timestamp goes into the blob metadata
`litestreamtimestamp` (Azure metadata names cannot contain dashes).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, BinaryIO

from . import ConfigError, NotFound, PreconditionFailed, StorageError, Transient, parse_replica_url
from .blob import BlobReplicaClient

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


class ABSReplicaClient(BlobReplicaClient):
    """Replica in an Azure Blob Storage container."""

    type = "abs"
    metadata_timestamp = "litestreamtimestamp"  # Azure metadata names cannot contain dashes
    _translate = staticmethod(translate)

    def __init__(
        self, *, account: str, container: str, path: str, url: str, endpoint: str, account_key: str, sas_token: str
    ) -> None:
        super().__init__(path, url, root=f"container {container!r}", service=endpoint)
        self.account = account
        self.container_name = container
        self.endpoint = endpoint
        self._account_key = account_key
        self._sas_token = sas_token

    @property
    def container(self) -> Any:
        """The SDK's container client, built on first use (the SDK is imported only then)."""
        return self.handle

    def _connect(self) -> Any:
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
        return service.get_container_client(self.container_name)

    # --- BlobReplicaClient hooks ----------------------------------------------------------------

    async def _probe(self) -> None:
        await self._run("container", lambda: self.container.get_container_properties())

    def _list(self, prefix: str, seek: int) -> Iterator[tuple[str, int, datetime]]:
        # The listing carries each blob's metadata, so the header timestamp costs nothing.
        for blob in self.container.list_blobs(name_starts_with=prefix, include=["metadata"]):
            yield blob.name, blob.size, self._created(blob.metadata, blob.creation_time)

    def _list_names(self, prefix: str) -> list[str]:
        return [b.name for b in self.container.list_blobs(name_starts_with=prefix)]

    def _download(self, key: str, offset: int, size: int | None) -> Iterator[bytes]:
        blob = self.container.get_blob_client(key)
        props = blob.get_blob_properties()
        if size == 0 or offset >= props.size:
            return iter(())
        # Pinning the ETag makes every chunk come from the same version of the blob.
        stream = blob.download_blob(offset=offset, length=size, etag=props.etag, match_condition=_if_match())
        return iter(stream.chunks())

    def _upload(self, key: str, src: BinaryIO, size: int, metadata: dict[str, str]) -> None:
        # Staged blocks stay invisible until the block list is committed: atomic for readers.
        # overwrite=False sends If-None-Match: * (on the single put, or on the block list commit).
        self.container.upload_blob(
            key, src, length=size, overwrite=False, metadata=metadata, max_concurrency=UPLOAD_CONCURRENCY
        )

    def _delete_objects(self, keys: list[str]) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        for key in keys:
            with contextlib.suppress(ResourceNotFoundError):
                self.container.delete_blob(key)

    # --- lease object: ETag conditions ---------------------------------------------------------

    def _read_lock(self) -> tuple[bytes, str]:
        stream = self.container.download_blob(self.lock_key)
        return stream.readall(), str(stream.properties.etag)

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
