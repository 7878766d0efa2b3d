"""NATS JetStream Object Store replicas (nats-py): objects `ltx/<level>/<min>-<max>.ltx`.

URL `nats://[user:pass@]host:port/<bucket>`; the object store bucket must exist already (as for
Litestream). The header timestamp goes into the object header `Litestream-Timestamp`, stored the
way Go's `nats.Header` marshals it (a list of values) so either tool reads the other's objects.

Reads stream the object's chunk messages one by one (nats-py's own `get` collects the whole object
in memory). The object store has no conditional write: `write_lock` compares the current lease
object's NUID and then writes, and an LTX file is written only after a look finds its name free,
both a best effort with a short race window between the look and the write.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
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
    settle_existing,
)

HEADER_TIMESTAMP = "Litestream-Timestamp"
LOCK_NAME = "lock.json"
CHUNK_TIMEOUT = 30.0
GO_ZERO_TIME = "0001-01-01T00:00:00Z"  # time.Time{} as nats.go marshals it


def from_settings(settings: Mapping[str, Any]) -> NATSReplicaClient:
    """`nats://[user:pass@]host[:port]/<bucket>` plus Litestream's NATS keys."""
    url = str(settings.get("url") or "")
    if not url:
        raise ConfigError("nats replica: a url is required (nats://HOST:PORT/BUCKET)")
    u = parse_replica_url(url)
    bucket = u.path.strip("/") or str(settings.get("bucket") or "")
    if not bucket or "/" in bucket:
        raise ConfigError(f"nats replica {url.split('?')[0]}: the URL path must be one object store bucket name")
    if settings.get("jwt") or settings.get("seed"):
        raise ConfigError(f"nats replica {u.host}: jwt/seed are not supported; use creds (a .creds file)")
    options: dict[str, Any] = {
        "user": settings.get("username") or u.username,
        "password": settings.get("password") or u.password,
        "token": settings.get("token"),
        "user_credentials": settings.get("creds"),
        "nkeys_seed": settings.get("nkey"),
        "max_reconnect_attempts": int(settings.get("max-reconnects", 60)),
        "reconnect_time_wait": _seconds(settings.get("reconnect-wait", 2)),
        "connect_timeout": _seconds(settings.get("timeout", 10)),
    }
    if settings.get("tls") or settings.get("root-cas") or settings.get("client-cert"):
        tls = ssl.create_default_context(cafile=settings.get("root-cas") or None)
        if settings.get("client-cert"):
            tls.load_cert_chain(str(settings["client-cert"]), settings.get("client-key") or None)
        options["tls"] = tls
    scheme = "tls" if options.get("tls") else "nats"
    server = f"{scheme}://{u.host}:{u.port or 4222}"
    return NATSReplicaClient(server, bucket, {k: v for k, v in options.items() if v is not None})


def _seconds(value: Any) -> float:
    """A Go duration such as `2s` or `500ms`, or a number of seconds."""
    text = str(value).strip()
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * scale
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"nats replica: invalid duration {value!r}") from None


def translate(exc: BaseException, what: str) -> StorageError:
    """Map nats-py exceptions onto the storage error types."""
    from nats import errors as ne
    from nats.js import errors as je

    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, je.NotFoundError | je.ObjectNotFoundError | je.BucketNotFoundError):
        return NotFound(f"{what}: not found")
    if isinstance(exc, ne.AuthorizationError):
        return StorageError(f"{what}: authorization failed: check username/password, token or creds")
    if isinstance(
        exc,
        ne.TimeoutError
        | ne.NoServersError
        | ne.ConnectionClosedError
        | ne.StaleConnectionError
        | je.ServiceUnavailableError
        | je.ServerError
        | ConnectionError
        | TimeoutError
        | OSError,
    ):
        return Transient(f"{what}: {type(exc).__name__} {exc}".rstrip())
    return StorageError(f"{what}: {type(exc).__name__}: {exc}")


class NATSReplicaClient:
    """Replica in a JetStream object store bucket."""

    type = "nats"
    # A range read replays the object's chunks from its start: restore fetches a file in one read.
    sequential_ranges = True

    def __init__(self, server: str, bucket: str, options: dict[str, Any]) -> None:
        self.server = server
        self.bucket = bucket
        self.url = f"{server}/{bucket}"
        self._options = options
        self._nc: Any = None
        self._store: Any = None

    def __repr__(self) -> str:
        return self.url

    def level_prefix(self, level: int) -> str:
        return f"ltx/{level}/"

    def ltx_name(self, level: int, min_txid: int, max_txid: int) -> str:
        return self.level_prefix(level) + format_ltx_name(min_txid, max_txid)

    async def store(self) -> Any:
        """The object store handle; connects on first use (nats-py is imported only here)."""
        if self._store is None:
            import nats

            try:
                if self._nc is None:
                    # nats-py may keep retrying an initial connection that is refused: bound it.
                    limit = 3 * self._options.get("connect_timeout", 10)
                    self._nc = await asyncio.wait_for(nats.connect(servers=[self.server], **self._options), limit)
                self._store = await self._nc.jetstream().object_store(self.bucket)
            except Exception as exc:
                raise translate(exc, self.url) from exc
        return self._store

    async def init(self) -> None:
        """Connect and open the bucket, which must exist."""
        try:
            await self.store()
        except NotFound:
            raise StorageError(
                f"nats replica {self.url}: object store bucket {self.bucket!r} does not exist "
                f"(create it first, e.g. `nats object add {self.bucket}`)"
            ) from None
        except Transient as exc:
            raise StorageError(f"nats replica {self.url}: cannot connect: {exc}") from None
        except StorageError as exc:
            raise StorageError(f"nats replica {exc}") from None

    async def _infos(self) -> list[Any]:
        from nats.js.errors import NotFoundError

        store = await self.store()
        try:
            return list(await store.list(ignore_deletes=True))
        except NotFoundError:
            return []  # nats-py reports an empty store this way

    async def ltx_files(self, level: int, seek: int = 0, use_metadata: bool = False) -> list[FileInfo]:
        prefix = self.level_prefix(level)
        try:
            infos = await self._infos()
        except Exception as exc:
            raise translate(exc, f"{self.url}: list") from exc
        return select_ltx_files(
            level, [(i.name[len(prefix) :], i.size or 0, _created(i)) for i in infos if i.name.startswith(prefix)], seek
        )

    async def open_ltx_file(
        self, level: int, min_txid: int, max_txid: int, offset: int = 0, size: int | None = None
    ) -> AsyncIterator[bytes]:
        from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE

        name = self.ltx_name(level, min_txid, max_txid)
        what = f"{self.url}: {name}"
        try:
            store = await self.store()
            info = await store.get_info(name)
        except Exception as exc:
            raise translate(exc, what) from exc
        end = info.size if size is None else min(info.size, offset + size)
        if offset >= end:
            return
        # The object's chunks are the messages of one subject; an ordered consumer replays them
        # in order, and the sha-256 in its info checks them once the whole object went by.
        subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self.bucket, obj=info.nuid)
        try:
            sub = await self._nc.jetstream().subscribe(subject, ordered_consumer=True)
        except Exception as exc:
            raise translate(exc, what) from exc
        digest = hashlib.sha256()
        pos = 0
        try:
            while pos < info.size:
                try:
                    msg = await sub.next_msg(timeout=CHUNK_TIMEOUT)
                except Exception as exc:
                    raise translate(exc, what) from exc
                data = msg.data
                digest.update(data)
                lo, hi = max(offset, pos), min(end, pos + len(data))
                if lo < hi:
                    yield data[lo - pos : hi - pos]
                pos += len(data)
                if pos >= end and end < info.size:
                    return
            expected = base64.urlsafe_b64decode(info.digest.split("=", 1)[1] + "==")
            if digest.digest() != expected[:32]:
                raise StorageError(f"{what}: object digest mismatch")
        finally:
            await sub.unsubscribe()

    async def write_ltx_file(self, level: int, min_txid: int, max_txid: int, src: BinaryIO) -> FileInfo:
        from nats.js.api import ObjectMeta

        name = self.ltx_name(level, min_txid, max_txid)
        created = header_timestamp(src)
        # The object's meta message goes out after all its chunks: readers see it whole or not at all.
        meta = ObjectMeta(name=name, headers={HEADER_TIMESTAMP: [format_timestamp(created)]})
        # The object store has no create-only put: looking first narrows the window in which a late
        # writer replaces another agent's file, without closing it.
        if await self._exists(name):
            return await settle_existing(self, level, min_txid, max_txid, src)
        try:
            store = await self.store()
            info = await store.put(name, src, meta=meta)
        except Exception as exc:
            raise translate(exc, f"{self.url}: upload {name}") from exc
        return FileInfo(level, min_txid, max_txid, info.size, created)

    async def _exists(self, name: str) -> bool:
        from nats.js.errors import NotFoundError

        try:
            await (await self.store()).get_info(name)
        except NotFoundError:
            return False
        except Exception as exc:
            raise translate(exc, f"{self.url}: {name}") from exc
        return True

    async def _delete(self, names: list[str]) -> None:
        from nats.js.errors import NotFoundError

        store = await self.store()
        for name in names:
            try:
                await _delete_object(store, name)
            except NotFoundError:
                pass
            except Exception as exc:
                raise translate(exc, f"{self.url}: delete {name}") from exc

    async def delete_ltx_files(self, files: list[FileInfo]) -> None:
        await self._delete([self.ltx_name(f.level, f.min_txid, f.max_txid) for f in files])

    async def delete_all(self) -> None:
        try:
            infos = await self._infos()
        except Exception as exc:
            raise translate(exc, f"{self.url}: list") from exc
        await self._delete([i.name for i in infos if i.name.startswith("ltx/")])

    async def close(self) -> None:
        """Close the connection."""
        if self._nc is not None:
            nc, self._nc, self._store = self._nc, None, None
            await nc.close()

    # --- lease object: best effort (compare NUID, then write) ------------------------------------

    async def _lock_info(self) -> Any:
        from nats.js.errors import NotFoundError

        store = await self.store()
        try:
            return await store.get_info(LOCK_NAME)
        except NotFoundError:
            return None

    async def read_lock(self) -> tuple[bytes, str] | None:
        try:
            info = await self._lock_info()
            if info is None:
                return None
            result = await (await self.store()).get(LOCK_NAME)
        except Exception as exc:
            err = translate(exc, f"{self.url}: {LOCK_NAME}")
            if isinstance(err, NotFound):
                return None
            raise err from exc
        return bytes(result.data), str(result.info.nuid)

    async def write_lock(self, body: bytes, if_match: str | None) -> str:
        try:
            info = await self._lock_info()
            if (None if info is None else str(info.nuid)) != if_match:
                raise PreconditionFailed(f"{self.url}: {LOCK_NAME}: lease object changed")
            written = await (await self.store()).put(LOCK_NAME, body)
        except Exception as exc:
            raise translate(exc, f"{self.url}: {LOCK_NAME}") from exc
        return str(written.nuid)

    async def delete_lock(self, if_match: str) -> None:
        try:
            info = await self._lock_info()
            if info is None:
                return
            if str(info.nuid) != if_match:
                raise PreconditionFailed(f"{self.url}: {LOCK_NAME}: lease object changed")
            await self._delete([LOCK_NAME])
        except Exception as exc:
            raise translate(exc, f"{self.url}: {LOCK_NAME}") from exc


async def _delete_object(store: Any, name: str) -> None:
    """nats-py's `ObjectStore.delete`, but the tombstone carries Go's zero time as its mtime.

    nats-py writes `"mtime": ""`, which Go's JSON decoder rejects: nats.go's List/Watch then drops
    that meta message, and when it is the newest one never signals the end of the initial listing,
    so `litestream restore` (and replicate) hang on a store where lifeboat deleted anything (the
    lease object on every clean shutdown). nats.go itself stores `time.Time{}` in tombstones.
    """
    from nats.js import api
    from nats.js.object_store import MSG_ROLLUP_SUBJECT, OBJ_CHUNKS_PRE_TEMPLATE, OBJ_META_PRE_TEMPLATE

    info = await store.get_info(name)
    if not info.nuid:
        raise StorageError(f"{name}: object meta has no NUID")
    info.deleted = True
    info.size = 0
    info.chunks = 0
    info.digest = ""
    info.mtime = GO_ZERO_TIME
    meta_subj = OBJ_META_PRE_TEMPLATE.format(bucket=store._name, obj=base64.urlsafe_b64encode(name.encode()).decode())
    try:
        await store._js.publish(
            meta_subj, json.dumps(info.as_dict()).encode(), headers={api.Header.ROLLUP: MSG_ROLLUP_SUBJECT}
        )
    finally:
        chunk_subj = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=store._name, obj=info.nuid)
        await store._js.purge_stream(store._stream, subject=chunk_subj)


def _created(info: Any) -> datetime:
    """The header timestamp if the object has one, else the object's mtime."""
    value = (info.headers or {}).get(HEADER_TIMESTAMP)
    if isinstance(value, list):
        value = value[0] if value else None
    return parse_timestamp(value or info.mtime)
