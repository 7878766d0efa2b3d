"""Replica storage: the `ReplicaClient` protocol, its typed errors, and the URL-scheme registry.

Each backend lives in its own module and imports its SDK lazily, so an agent replicating to a
directory never pays for boto3 or the Azure SDK.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import re
import struct
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable
from urllib.parse import parse_qsl, unquote, urlsplit

LTX_NAME_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")
SNAPSHOT_LEVEL = 9


class StorageError(Exception):
    """A replica operation failed; the message names the replica and object."""


class NotFound(StorageError):
    """The object or container does not exist."""


class PreconditionFailed(StorageError):
    """A conditional write lost: someone else changed the object first."""


class Transient(StorageError):
    """Throttling, 5xx, timeouts, dropped connections: worth retrying."""


class ConfigError(ValueError):
    """A replica URL or option is wrong; the message names it."""


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One LTX file in a replica."""

    level: int
    min_txid: int
    max_txid: int
    size: int
    created_at: datetime

    @property
    def name(self) -> str:
        return format_ltx_name(self.min_txid, self.max_txid)


def format_ltx_name(min_txid: int, max_txid: int) -> str:
    """Litestream's file name: `%016x-%016x.ltx`."""
    return f"{min_txid:016x}-{max_txid:016x}.ltx"


def parse_ltx_name(name: str) -> tuple[int, int] | None:
    """(min, max) TXIDs from a file name, or None for names a listing must skip."""
    m = LTX_NAME_RE.match(name)
    if m is None:
        return None
    return int(m.group(1), 16), int(m.group(2), 16)


def header_timestamp(src: BinaryIO) -> datetime:
    """The creation time recorded in an LTX header (bytes 32..40, Unix ms); rewinds `src`."""
    pos = src.tell()
    head = src.read(40)
    src.seek(pos)
    if len(head) < 40 or head[:4] != b"LTX1":
        raise StorageError("not an LTX file: header too short or bad magic")
    (ms,) = struct.unpack_from(">q", head, 32)
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def format_timestamp(ts: datetime) -> str:
    """RFC3339Nano in UTC, as Go's `time.RFC3339Nano` prints it (trailing zeros trimmed)."""
    ts = ts.astimezone(UTC)
    frac = f"{ts.microsecond:06d}".rstrip("0")
    return ts.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def parse_timestamp(text: str) -> datetime:
    """Parse RFC3339 / RFC3339Nano (nanoseconds truncated to microseconds)."""
    text = text.strip()
    m = re.match(r"^(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$", text)
    if m is None:
        raise ValueError(f"invalid RFC3339 timestamp: {text!r}")
    base, frac, tz = m.groups()
    frac = (frac or ".0")[1:7].ljust(6, "0")
    tz = "+00:00" if tz in ("Z", "z") else tz
    return datetime.fromisoformat(f"{base.replace('t', 'T').replace(' ', 'T')}.{frac}{tz}").astimezone(UTC)


@runtime_checkable
class ReplicaClient(Protocol):
    """What a storage backend provides. Every backend passes the same contract suite.

    A backend whose range reads stream the object from its start sets the class attribute
    `sequential_ranges = True`; restore then fetches each file with one read, not ranged parts.
    A backend that can list every level in fewer requests than one per level offers
    `async all_ltx_files() -> dict[int, list[FileInfo]]` (see `ltx_files_by_level`).
    """

    type: str

    async def init(self) -> None:
        """Check the destination is reachable and usable; raise a clear error otherwise."""

    async def ltx_files(self, level: int, seek: int = 0, use_metadata: bool = False) -> list[FileInfo]:
        """Files of one level with `min_txid >= seek`, sorted by name."""

    def open_ltx_file(
        self, level: int, min_txid: int, max_txid: int, offset: int = 0, size: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream a file's bytes (a range when offset/size are given). Raises NotFound."""

    async def write_ltx_file(self, level: int, min_txid: int, max_txid: int, src: BinaryIO) -> FileInfo:
        """Store a file atomically; record its header timestamp as the object's creation time.

        Create-only where the store can refuse to replace an object: when the name is taken,
        `settle_existing` decides whether it is this very file (done) or not (PreconditionFailed).
        """

    async def delete_ltx_files(self, files: list[FileInfo]) -> None:
        """Delete files; missing ones are not an error."""

    async def delete_all(self) -> None:
        """Remove every file of this replica."""

    async def close(self) -> None:
        """Release connections (SFTP sessions, NATS); the client may not be used afterwards."""

    # The lease object `<path>/lock.json` (see lifeboat.agent.lease). A version tag is the store's
    # ETag, generation or content hash: opaque, only compared for equality by the store itself.

    async def read_lock(self) -> tuple[bytes, str] | None:
        """The lease object's body and version tag, or None when there is none."""

    async def write_lock(self, body: bytes, if_match: str | None) -> str:
        """Write the lease object if its version is still `if_match` (None: only if it is absent).

        Returns the new version tag; raises PreconditionFailed when the condition does not hold.
        """

    async def delete_lock(self, if_match: str) -> None:
        """Delete the lease object if its version is still `if_match` (PreconditionFailed if not).

        An object that is already gone is not an error.
        """


# A blocking write of a sealed local LTX file (`storage.file.SealedFile`: complete, fsynced, never
# changed again) at (level, min_txid, max_txid, path); the contract of `write_ltx_file`, except
# that it may decline (None: nothing written, `write_ltx_file` is the way for this file).
SealedWriter = Callable[[int, int, int, Path], FileInfo | None]


def sealed_writer(client: object) -> SealedWriter | None:
    """The blocking writer `client` offers for sealed local files, or None.

    Only a store reached without the network offers one (a directory replica): a caller already in
    a worker thread then ships a file it just wrote in the same thread call instead of handing the
    upload back to the event loop and out to a thread again. Wrappers (the lease's fence, metrics)
    offer one exactly when the client they wrap does. Looked up on the type: wrappers that forward
    unknown attributes must not hand out the inner client's writer unwrapped.
    """
    method = getattr(type(client), "sealed_writer", None)
    return None if method is None else method(client)


async def ltx_files_by_level(client: ReplicaClient) -> dict[int, list[FileInfo]]:
    """The files of every level (L0 to the snapshot level; an empty level is left out), each list
    sorted by name: in one request where the store's layout allows (a client method
    `all_ltx_files`, looked up on the type like `sealed_writer`), else one listing per level, all at
    once. On an object store each listing is a request and a few milliseconds of SDK CPU: ten of
    them were most of the cost of opening a database."""
    method = getattr(type(client), "all_ltx_files", None)
    if method is not None:
        by_level: dict[int, list[FileInfo]] = await method(client)
        return by_level
    return await each_level_ltx_files(client)


async def each_level_ltx_files(client: ReplicaClient) -> dict[int, list[FileInfo]]:
    """`ltx_files_by_level` with one `ltx_files` call per level, all at once."""
    levels = range(SNAPSHOT_LEVEL + 1)
    listings = await asyncio.gather(*(client.ltx_files(level) for level in levels))
    return {level: files for level, files in zip(levels, listings, strict=True) if files}


# Bytes of an LTX file that differ between two writes of the same content: the header timestamp
# (bytes 32..40) and the file checksum (the last 8 bytes), which covers it.
_TIMESTAMP = slice(32, 40)
_CHECKSUM_SIZE = 8


async def settle_existing(client: ReplicaClient, level: int, min_txid: int, max_txid: int, src: BinaryIO) -> FileInfo:
    """A create-only write of `src` (from its current position) found its name taken.

    The object there counts as written by us when it holds the same bytes as `src`, ignoring the
    header timestamp and the file checksum: our own retry after an answer was lost, or a snapshot
    or compaction re-run over the same state. Then its FileInfo is returned and it stays as it
    is. Anything else is another agent's file: PreconditionFailed, and it is left alone.
    """
    name = f"level {level} file {format_ltx_name(min_txid, max_txid)}"
    start = src.tell()
    size = src.seek(0, 2) - start
    src.seek(start)
    head = b""
    offset = 0
    same = True
    try:
        async for chunk in client.open_ltx_file(level, min_txid, max_txid):
            if len(head) < 40:
                head += chunk[: 40 - len(head)]
            ours = src.read(len(chunk))
            same = same and _same_content(ours, chunk, offset, size)
            offset += len(chunk)
    finally:
        src.seek(start)
    if not same or offset != size:
        raise PreconditionFailed(f"{client!r}: {name} already exists with other content (written by another agent)")
    created = header_timestamp(io.BytesIO(head))
    return FileInfo(level, min_txid, max_txid, size, created)


def _same_content(ours: bytes, theirs: bytes, offset: int, size: int) -> bool:
    """Equal chunks at `offset` of a `size`-byte file, outside the timestamp and checksum bytes."""
    if len(ours) != len(theirs):
        return False
    if ours == theirs:
        return True
    a, b = bytearray(ours), bytearray(theirs)
    for lo, hi in ((_TIMESTAMP.start, _TIMESTAMP.stop), (size - _CHECKSUM_SIZE, size)):
        lo, hi = max(lo - offset, 0), min(hi - offset, len(a))
        if lo < hi:
            a[lo:hi] = b[lo:hi]
    return a == b


async def read_ltx_file(client: ReplicaClient, info: FileInfo) -> bytes:
    """The whole file in memory: only for small files (L0, headers)."""
    chunks = [c async for c in client.open_ltx_file(info.level, info.min_txid, info.max_txid)]
    return b"".join(chunks)


def select_ltx_files(level: int, entries: Iterable[tuple[str, int, datetime]], seek: int = 0) -> list[FileInfo]:
    """FileInfos from (base name, size, created) listing entries: LTX names only, `min >= seek`, sorted."""
    out = []
    for name, size, created in entries:
        txids = parse_ltx_name(name)
        if txids is not None and txids[0] >= seek:
            out.append(FileInfo(level, txids[0], txids[1], size, created))
    out.sort(key=lambda f: (f.min_txid, f.max_txid))
    return out


# scheme -> module under lifeboat.agent.storage; imported only when used.
_BACKENDS: dict[str, str] = {
    "file": "file",
    "s3": "s3",
    "gs": "gcs",
    "abs": "abs",
    "sftp": "sftp",
    "nats": "nats",
}


@dataclass(frozen=True, slots=True)
class ReplicaURL:
    """A parsed replica URL: scheme, host (bucket/container/server), path, query options."""

    scheme: str
    host: str
    path: str
    username: str | None
    password: str | None
    port: int | None
    query: dict[str, str]


def parse_replica_url(url: str) -> ReplicaURL:
    """Split a replica URL; a bare path means `file`. Raises ConfigError for unknown schemes."""
    if "://" not in url:
        if url.startswith("/"):
            return ReplicaURL("file", "", url, None, None, None, {})
        raise ConfigError(f"invalid replica URL {url!r}: expected SCHEME://... or an absolute path")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _BACKENDS:
        raise ConfigError(
            f"invalid replica URL {url!r}: unknown scheme {scheme!r} (expected one of {', '.join(_BACKENDS)})"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"invalid replica URL {url!r}: {exc}") from None
    path = unquote(parts.path)
    if ".." in path.split("/"):
        raise ConfigError(f"invalid replica URL {url!r}: '..' is not allowed in the path")
    host = parts.hostname or ""
    if ".." in host or "/" in host:
        raise ConfigError(f"invalid replica URL {url!r}: invalid bucket or host name {host!r}")
    return ReplicaURL(
        scheme=scheme,
        host=host,
        path=path,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        port=port,
        query=dict(parse_qsl(parts.query)),
    )


def replica_type(settings: Mapping[str, Any]) -> str:
    """The backend a replica config block selects (`type:` or the URL's scheme)."""
    if settings.get("url"):
        return parse_replica_url(str(settings["url"])).scheme
    kind = str(settings.get("type") or "file")
    if kind not in _BACKENDS:
        raise ConfigError(f"replica type {kind!r} is not supported (expected one of {', '.join(_BACKENDS)})")
    return kind


# scheme -> (the SDK module the backend needs, the extra that installs it)
_SDKS: dict[str, tuple[str, str]] = {
    "s3": ("boto3", "s3"),
    "gs": ("google.cloud.storage", "gcs"),
    "abs": ("azure.storage.blob", "abs"),
    "sftp": ("paramiko", "sftp"),
    "nats": ("nats", "nats"),
}


def require_sdk(kind: str) -> None:
    """Import the backend's SDK now, so a missing one is one line naming the extra to install
    rather than a traceback from deep inside the first upload."""
    if kind not in _SDKS:
        return
    module, extra = _SDKS[kind]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"{kind} replicas need the {module.split('.')[0]} package, which is not installed ({exc}): "
            f"pip install 'sqlite-lifeboat[{extra}]'"
        ) from None


def new_client(settings: Mapping[str, Any]) -> ReplicaClient:
    """Build the client for a replica config block (Litestream keys: url, type, path, bucket, ...)."""
    kind = replica_type(settings)
    require_sdk(kind)
    module = importlib.import_module(f"{__name__}.{_BACKENDS[kind]}")
    client: ReplicaClient = module.from_settings(settings)
    return client
