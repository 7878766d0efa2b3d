"""S3 and S3-compatible replicas (boto3): keys `<path>/<level %04x>/<min>-<max>.ltx`.

The header timestamp goes into the object metadata `litestream-timestamp`; a listing reports
LastModified unless asked for the metadata (one HEAD per object, as Litestream does).
"""

from __future__ import annotations

import asyncio
import base64
import os
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO

from . import (
    ConfigError,
    FileInfo,
    NotFound,
    PreconditionFailed,
    StorageError,
    Transient,
    parse_replica_url,
    s3_clients,
)
from .blob import BlobReplicaClient
from .file import CHUNK
from .s3_clients import HEAD_CONCURRENCY

DEFAULT_PART_SIZE = 5 << 20
DEFAULT_CONCURRENCY = 5
DELETE_BATCH = 1000  # S3's DeleteObjects limit

_AWS_HOST_RE = re.compile(r"^(?P<bucket>.+)\.s3[.-](?P<region>[a-z0-9-]+)\.amazonaws\.com$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "ki": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "mi": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "gi": 1 << 30,
}
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
}


def parse_size(text: str | int, what: str) -> int:
    """A byte size as Litestream writes it (`5MiB`, `10MB`, `1048576`)."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if m is None or (m.group(2) or "").lower() not in _SIZE_UNITS:
        raise ConfigError(f"s3 replica: invalid {what} {text!r} (expected a size such as 5MiB)")
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])


def _flag(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


@dataclass(frozen=True, slots=True)
class S3Options:
    """How to reach the bucket and how to write to it: Litestream's S3 replica keys."""

    region: str = ""
    endpoint: str = ""
    force_path_style: bool = False
    skip_verify: bool = False
    part_size: int = DEFAULT_PART_SIZE
    concurrency: int = DEFAULT_CONCURRENCY
    storage_class: str = ""
    sse_customer_algorithm: str = ""
    sse_customer_key: str = field(default="", repr=False)
    sse_kms_key_id: str = ""
    sign_payload: bool = True  # SigV4 over the payload's SHA-256; false: UNSIGNED-PAYLOAD (HTTPS only)
    require_content_md5: bool = True  # Content-MD5 on DeleteObjects, which some stores demand
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)


def from_settings(settings: Mapping[str, Any]) -> S3ReplicaClient:
    """`s3://bucket[/path]?endpoint=&region=&forcePathStyle=...` and/or Litestream's S3 keys.

    URL query options come first; explicit config keys override them, as in Litestream.
    """
    opts: dict[str, Any] = {}
    bucket = str(settings.get("bucket") or "")
    path = str(settings.get("path") or "")
    region = ""
    url = str(settings.get("url") or "")
    if url:
        u = parse_replica_url(url)
        bucket, path = u.host, posixpath.normpath(u.path or ".").lstrip("/")
        if m := _AWS_HOST_RE.match(bucket):
            bucket, region = m.group("bucket"), m.group("region")
        # camelCase query names are Litestream's; map them onto the config keys.
        for key, value in u.query.items():
            opts[re.sub(r"([A-Z])", lambda c: "-" + c.group(1).lower(), key)] = value
    opts.update({k: v for k, v in settings.items() if v is not None and k not in ("url", "type")})
    if not bucket:
        raise ConfigError("s3 replica: a bucket is required (url: s3://BUCKET/PATH or bucket:)")
    endpoint = str(opts.get("endpoint") or os.environ.get("LITESTREAM_S3_ENDPOINT") or "")
    if endpoint and not endpoint.startswith(("http://", "https://")):
        # Litestream's defaults: a bare host in the URL query means http, in the config https.
        in_query = url and parse_replica_url(url).query.get("endpoint") == endpoint
        endpoint = ("http://" if in_query else "https://") + endpoint
    sse_key = opts.get("sse-customer-key")
    if opts.get("sse-customer-key-path"):
        with open(str(opts["sse-customer-key-path"]), "rb") as f:
            sse_key = f.read().strip().decode()
    return S3ReplicaClient(
        bucket=bucket,
        path=path,
        url=url or f"s3://{bucket}/{path}",
        options=S3Options(
            region=str(opts.get("region") or region),
            endpoint=endpoint,
            # Custom endpoints (MinIO, R2, moto, ...) want path-style unless told otherwise.
            force_path_style=_flag(opts["force-path-style"]) if "force-path-style" in opts else bool(endpoint),
            skip_verify=_flag(opts.get("skip-verify", False)),
            part_size=parse_size(opts.get("part-size", DEFAULT_PART_SIZE), "part-size"),
            concurrency=int(opts.get("concurrency", DEFAULT_CONCURRENCY)),
            storage_class=str(opts.get("storage-class") or ""),
            sse_customer_algorithm=str(opts.get("sse-customer-algorithm") or ("AES256" if sse_key else "")),
            sse_customer_key=str(sse_key or ""),
            sse_kms_key_id=str(opts.get("sse-kms-key-id") or ""),
            sign_payload=_flag(opts.get("sign-payload", True)),
            require_content_md5=_flag(opts.get("require-content-md5", True)),
            access_key_id=str(
                opts.get("access-key-id")
                or os.environ.get("AWS_ACCESS_KEY_ID")
                or os.environ.get("LITESTREAM_ACCESS_KEY_ID")
                or ""
            ),
            secret_access_key=str(
                opts.get("secret-access-key")
                or os.environ.get("AWS_SECRET_ACCESS_KEY")
                or os.environ.get("LITESTREAM_SECRET_ACCESS_KEY")
                or ""
            ),
        ),
    )


def translate(exc: BaseException, what: str) -> StorageError:
    """Map a botocore exception onto the storage error types; `what` names the object."""
    from botocore import exceptions as be

    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, be.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        msg = f"{what}: {code or status} {err.get('Message', '')}".rstrip()
        if code in ("NoSuchKey", "NotFound", "404", "NoSuchBucket"):
            return NotFound(msg)
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            return PreconditionFailed(msg)
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return Transient(msg)
        return StorageError(msg)
    # IncompleteReadError: a body that ended early (a connection closed mid-download).
    broken = be.ConnectionError | be.HTTPClientError | be.IncompleteReadError | ConnectionError | TimeoutError
    if isinstance(exc, broken):
        return Transient(f"{what}: {exc}")
    if isinstance(exc, be.NoCredentialsError | be.PartialCredentialsError):
        return StorageError(f"{what}: no S3 credentials (set access-key-id/secret-access-key or AWS_*)")
    return StorageError(f"{what}: {type(exc).__name__}: {exc}")


class _KeepOpen:
    """A file object whose `close` leaves the underlying file open."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def close(self) -> None:
        """The owner of the underlying file closes it."""


class S3ReplicaClient(BlobReplicaClient):
    """Replica in an S3 bucket (AWS, or any S3-compatible store through `endpoint`)."""

    type = "s3"
    _translate = staticmethod(translate)

    def __init__(self, *, bucket: str, path: str, url: str, options: S3Options | None = None) -> None:
        options = options or S3Options()
        if options.part_size < 5 << 20:
            raise ConfigError(f"s3 replica {url}: part-size must be at least 5MiB (S3's minimum)")
        if options.concurrency < 1:
            raise ConfigError(f"s3 replica {url}: concurrency must be at least 1")
        super().__init__(path, url, root=f"bucket {bucket!r}", service=options.endpoint or "S3")
        self.bucket = bucket
        self.options = options
        self._client_key: s3_clients.ClientKey | None = None  # what the handle was acquired with

    # --- keys: Litestream's S3 layout `<path>/<level %04x>/...` -------------------------------

    def level_prefix(self, level: int) -> str:
        # Litestream does not normalise: `path` "" gives "/0000/...", a URL without a path "./0000/...".
        return f"{self.path}/{level:04x}/"

    @property
    def lock_key(self) -> str:
        return f"{self.path}/lock.json" if self.path else "lock.json"

    @property
    def data_prefix(self) -> str:
        return f"{self.path}/"

    @property
    def levels_prefix(self) -> str:
        # Levels 0-9 are `<path>/0000/`..`<path>/0009/`: this leaves out the lease and 0.3's `generations/`.
        return f"{self.path}/000"

    # --- client -----------------------------------------------------------------------------

    @property
    def s3(self) -> Any:
        """The boto3 client (shared, see `s3_clients`), acquired on first use (boto3 is imported only then)."""
        return self.handle

    def _connect(self) -> Any:
        # Made now, not in __init__: the timeouts in it come from the environment at first use.
        self._client_key = s3_clients.ClientKey.of(self.options)
        return s3_clients.acquire(self._client_key)

    def _disconnect(self, handle: Any) -> None:
        # The client is shared: the last replica using it closes it.
        if self._client_key is not None:
            s3_clients.release(self._client_key)

    def _sse(self) -> dict[str, Any]:
        """Request parameters for server-side encryption (SSE-C applies to reads and HEADs too)."""
        if not self.options.sse_customer_key:
            return {}
        key = self.options.sse_customer_key.encode()
        if len(key) != 32:
            # A key given base64-encoded; botocore wants the raw 32 bytes (it adds the MD5 itself).
            key = base64.b64decode(key)
        return {"SSECustomerAlgorithm": self.options.sse_customer_algorithm, "SSECustomerKey": key}

    async def _call(self, what: str, method: str, /, **kwargs: Any) -> Any:
        """One S3 request, `self.s3.<method>(**kwargs)`, through `_run`."""
        return await self._run(what, lambda: getattr(self.s3, method)(**kwargs))

    # --- BlobReplicaClient hooks ----------------------------------------------------------------

    async def _probe(self) -> None:
        try:
            await asyncio.to_thread(lambda: self.s3.head_bucket(Bucket=self.bucket))
        except Exception as exc:
            # Named by the URL alone (not `_run`'s "<url>: <what>"): `_init_failure` adds the rest.
            raise translate(exc, self.url) from exc

    def _init_failure(self, exc: StorageError) -> str:
        text = str(exc)
        if " 403" in text or "Forbidden" in text or "AccessDenied" in text or "InvalidAccessKeyId" in text:
            text = "access denied: check the credentials (access-key-id/secret-access-key or AWS_*)"
        return f"{self.url}: {text}"

    def _list(self, prefix: str, seek: int) -> Iterable[tuple[str, int, datetime]]:
        # Keys sort by name, so starting after "<prefix><seek>" skips every file below `seek` (with
        # nothing to skip, none: `all_ltx_files` lists several levels under one shorter prefix).
        start = {"StartAfter": f"{prefix}{seek:016x}"} if seek else {}
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, **start)
        return [(obj["Key"], obj["Size"], obj["LastModified"]) for page in pages for obj in page.get("Contents", [])]

    def _list_names(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def _download(self, key: str, offset: int, size: int | None) -> Iterator[bytes]:
        if size == 0:
            return iter(())
        rng = f"bytes={offset}-" if size is None else f"bytes={offset}-{offset + size - 1}"
        try:
            out = self.s3.get_object(Bucket=self.bucket, Key=key, Range=rng, **self._sse())
        except Exception as exc:
            err = getattr(exc, "response", {}).get("Error", {})
            if err.get("Code") == "InvalidRange":
                # Reading from the end of an object: S3 answers 416 (unless the key is missing).
                self.s3.head_object(Bucket=self.bucket, Key=key, **self._sse())
                return iter(())
            raise
        body: Iterator[bytes] = out["Body"].iter_chunks(CHUNK)
        return body

    def _upload(self, key: str, src: BinaryIO, size: int, metadata: dict[str, str]) -> None:
        from boto3.s3.transfer import TransferConfig

        opts = self.options
        extra: dict[str, Any] = {"Metadata": metadata, **self._sse()}
        if opts.storage_class:
            extra["StorageClass"] = opts.storage_class
        if opts.sse_kms_key_id:
            extra.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=opts.sse_kms_key_id)
        # One PutObject below part-size, multipart above: S3 shows neither until it is complete.
        transfer = TransferConfig(
            multipart_threshold=opts.part_size,
            multipart_chunksize=opts.part_size,
            max_concurrency=opts.concurrency,
            use_threads=opts.concurrency > 1,
        )
        # The transfer manager closes its source when a request fails; the caller still needs it
        # (a create-only conflict is settled by comparing it with the object there).
        self.s3.upload_fileobj(_KeepOpen(src), self.bucket, key, ExtraArgs=extra, Config=transfer)

    def _delete_objects(self, keys: list[str]) -> None:
        # DeleteObjects takes up to DELETE_BATCH keys a request.
        for i in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": k} for k in keys[i : i + DELETE_BATCH]]
            out = self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            # Deleting a missing key is a success in S3; anything reported here really failed.
            if errors := out.get("Errors"):
                first = errors[0]
                raise StorageError(
                    f"{self.url}: delete {first.get('Key')}: {first.get('Code')} {first.get('Message', '')}"
                )

    # --- ReplicaClient ----------------------------------------------------------------------

    async def ltx_files(self, level: int, seek: int = 0, use_metadata: bool = False) -> list[FileInfo]:
        files = await super().ltx_files(level, seek)
        if use_metadata and files:
            # Same error label as the listing: to the caller both are one "list" operation.
            files = await self._run(f"list {self.level_prefix(level)}", self._with_metadata, files)
        return files

    def _with_metadata(self, files: list[FileInfo]) -> list[FileInfo]:
        def created(info: FileInfo) -> datetime:
            key = self.ltx_key(info.level, info.min_txid, info.max_txid)
            head = self.s3.head_object(Bucket=self.bucket, Key=key, **self._sse())
            return self._created(head.get("Metadata", {}), info.created_at)

        with ThreadPoolExecutor(HEAD_CONCURRENCY) as pool:
            stamps = list(pool.map(created, files))
        return [FileInfo(f.level, f.min_txid, f.max_txid, f.size, ts) for f, ts in zip(files, stamps, strict=True)]

    # --- lease object: S3 conditional writes (If-None-Match / If-Match) -----------------------

    def _read_lock(self) -> tuple[bytes, str]:
        out = self.s3.get_object(Bucket=self.bucket, Key=self.lock_key)
        return out["Body"].read(), out["ETag"]

    async def write_lock(self, body: bytes, if_match: str | None) -> str:
        cond = {"IfNoneMatch": "*"} if if_match is None else {"IfMatch": if_match}
        out = await self._call(
            self.lock_key,
            "put_object",
            Bucket=self.bucket,
            Key=self.lock_key,
            Body=body,
            ContentType="application/json",
            **cond,
        )
        return str(out["ETag"])

    async def delete_lock(self, if_match: str) -> None:
        try:
            await self._call(self.lock_key, "delete_object", Bucket=self.bucket, Key=self.lock_key, IfMatch=if_match)
        except NotFound:
            return
