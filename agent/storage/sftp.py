"""SFTP replicas (paramiko): `<path>/ltx/<level>/<min>-<max>.ltx`, mtime = LTX header timestamp.

Files are written to a temp name, stamped, then renamed over the final name (OpenSSH's
posix-rename), so a reader sees either nothing or the whole file.

Host keys are verified, unlike Litestream (which accepts any key when `host-key` is empty): the
server's key must equal the `host-key` option (an OpenSSH public key line) or be listed for the
host in `~/.ssh/known_hosts`. `insecure-ignore-host-key: true` (URL `?insecureIgnoreHostKey=true`)
is the explicit opt-out.
"""

from __future__ import annotations

import asyncio
import base64
import os
import posixpath
import socket
import stat
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, BinaryIO, TypeVar

from . import (
    ConfigError,
    FileInfo,
    NotFound,
    PreconditionFailed,
    StorageError,
    Transient,
    format_ltx_name,
    header_timestamp,
    parse_replica_url,
    select_ltx_files,
    settle_existing,
)
from .file import CHUNK, lock_delete, lock_read, lock_write
from .retry import iterate_in_thread

T = TypeVar("T")
DEFAULT_PORT = 22
CONNECT_TIMEOUT = 10.0
READ_REQUEST = 32 << 10  # paramiko's largest SFTP read request


def _flag(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")


def from_settings(settings: Mapping[str, Any]) -> SFTPReplicaClient:
    """`sftp://user[:password]@host[:port]/path` and/or `host`, `user`, `password`, `key-path`, `host-key`."""
    url = str(settings.get("url") or "")
    host, port, user, password, path, query = "", DEFAULT_PORT, "", "", "", {}
    if url:
        u = parse_replica_url(url)
        host, port, user, password = u.host, u.port or DEFAULT_PORT, u.username or "", u.password or ""
        path, query = u.path, u.query
    if settings.get("host"):
        host, _, p = str(settings["host"]).partition(":")
        port = int(p or port)
    user = str(settings.get("user") or user)
    path = str(settings.get("path") or path)
    if not host or not user:
        raise ConfigError(f"sftp replica {url or host}: a host and a user are required (sftp://USER@HOST/PATH)")
    return SFTPReplicaClient(
        host=host,
        port=port,
        user=user,
        path=path.rstrip("/") or "/",
        password=str(settings.get("password") or password),
        key_path=str(settings.get("key-path") or query.get("keyPath") or ""),
        host_key=str(settings.get("host-key") or query.get("hostKey") or ""),
        insecure_ignore_host_key=_flag(
            settings.get("insecure-ignore-host-key", query.get("insecureIgnoreHostKey", False))
        ),
        concurrent_writes=_flag(settings.get("concurrent-writes", query.get("concurrentWrites", True))),
    )


def _put(sftp: Any, src: BinaryIO, path: str, *, pipelined: bool) -> int:
    """Copy `src` to `path`; returns the size the server reports. paramiko's `putfo` always pipelines."""
    if pipelined:
        return int(sftp.putfo(src, path).st_size)
    with sftp.open(path, "wb") as f:
        f.set_pipelined(False)
        while chunk := src.read(CHUNK):
            f.write(chunk)
    return int(sftp.stat(path).st_size)


def translate(exc: BaseException, what: str) -> StorageError:
    """Map paramiko and socket errors onto the storage error types."""
    import paramiko

    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"{what}: no such file")
    if isinstance(exc, paramiko.AuthenticationException):
        return StorageError(f"{what}: authentication failed: check user, key-path or password")
    if isinstance(exc, paramiko.SSHException | EOFError | ConnectionError | TimeoutError | socket.error):
        return Transient(f"{what}: {exc or type(exc).__name__}")
    return StorageError(f"{what}: {type(exc).__name__}: {exc}")


class SFTPReplicaClient:
    """Replica in a directory on an SFTP server; one SSH connection, one SFTP channel per operation."""

    type = "sftp"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        user: str,
        path: str,
        password: str = "",
        key_path: str = "",
        host_key: str = "",
        insecure_ignore_host_key: bool = False,
        concurrent_writes: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.path = path
        self.url = f"sftp://{user}@{host}:{port}{path}"
        self._password = password
        self._key_path = key_path
        self._host_key = host_key
        self._insecure = insecure_ignore_host_key
        # Pipelined writes (many requests in flight, acknowledged later): Litestream's
        # `concurrent-writes`. Some servers need them off to keep a file's writes in order.
        self.concurrent_writes = concurrent_writes
        self._transport: Any = None
        self._connect_lock = threading.Lock()

    def __repr__(self) -> str:
        return self.url

    def level_prefix(self, level: int) -> str:
        return posixpath.join(self.path, "ltx", str(level)) + "/"

    def ltx_path(self, level: int, min_txid: int, max_txid: int) -> str:
        return self.level_prefix(level) + format_ltx_name(min_txid, max_txid)

    @property
    def lock_path(self) -> str:
        return posixpath.join(self.path, "lock.json")

    # --- connection -----------------------------------------------------------------------------

    def _connect(self) -> Any:
        import paramiko

        with self._connect_lock:
            if self._transport is not None and self._transport.is_active():
                return self._transport
            sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT)
            transport = paramiko.Transport(sock)
            try:
                transport.start_client(timeout=CONNECT_TIMEOUT)
                self._verify_host_key(transport.get_remote_server_key())
                key = paramiko.PKey.from_path(self._key_path) if self._key_path else None
                if key is not None:
                    transport.auth_publickey(self.user, key)
                if not transport.is_authenticated() and self._password:
                    transport.auth_password(self.user, self._password)
                if not transport.is_authenticated():
                    raise paramiko.AuthenticationException("no key-path or password accepted")
            except BaseException:
                transport.close()
                raise
            self._transport = transport
            return transport

    def _verify_host_key(self, key: Any) -> None:
        if self._insecure:
            return
        offered = (key.get_name(), key.get_base64())
        if self._host_key:
            parts = self._host_key.split()
            if len(parts) < 2:
                raise ConfigError(f"sftp replica {self.url}: host-key must be an OpenSSH public key line")
            if (parts[0], parts[1]) == offered:
                return
        else:
            import paramiko

            known = paramiko.HostKeys()
            with_port = self.host if self.port == DEFAULT_PORT else f"[{self.host}]:{self.port}"
            try:
                known.load(os.path.expanduser("~/.ssh/known_hosts"))
            except FileNotFoundError:
                pass
            entry = known.lookup(with_port) or {}
            if any((k.get_name(), k.get_base64()) == offered for k in entry.values()):
                return
        fingerprint = base64.b64encode(key.get_fingerprint()).decode()
        raise StorageError(
            f"sftp replica {self.url}: unknown host key {offered[0]} (md5 {fingerprint}): set host-key to "
            "the server's public key line, or insecure-ignore-host-key: true to skip the check"
        )

    def _with_sftp(self, fn: Callable[[Any], T]) -> T:
        import paramiko

        sftp = paramiko.SFTPClient.from_transport(self._connect())
        try:
            return fn(sftp)
        finally:
            sftp.close()

    async def run(self, fn: Callable[[Any], T], what: str = "") -> T:
        """Run `fn(sftp_client)` in a worker thread on a fresh SFTP channel, errors translated."""
        try:
            return await asyncio.to_thread(self._with_sftp, fn)
        except Exception as exc:
            raise translate(exc, f"{self.url}{what}") from exc

    # --- ReplicaClient ------------------------------------------------------------------------

    async def init(self) -> None:
        """Connect, authenticate, check the host key, and create the replica directory."""
        try:
            await self.run(lambda sftp: _makedirs(sftp, self.path))
        except Transient as exc:
            raise StorageError(f"sftp replica {self.url}: cannot connect: {exc}") from None
        except StorageError as exc:
            text = str(exc)
            raise StorageError(text if text.startswith("sftp replica") else f"sftp replica {text}") from None

    async def ltx_files(self, level: int, seek: int = 0, use_metadata: bool = False) -> list[FileInfo]:
        prefix = self.level_prefix(level)

        def listing(sftp: Any) -> list[FileInfo]:
            try:
                attrs = sftp.listdir_attr(prefix)
            except FileNotFoundError:
                return []
            entries = [
                (a.filename, a.st_size, datetime.fromtimestamp(a.st_mtime, tz=UTC))
                for a in attrs
                if stat.S_ISREG(a.st_mode or 0)
            ]
            return select_ltx_files(level, entries, seek)

        return await self.run(listing, f": list {prefix}")

    def open_ltx_file(
        self, level: int, min_txid: int, max_txid: int, offset: int = 0, size: int | None = None
    ) -> AsyncIterator[bytes]:
        return self._read(self.ltx_path(level, min_txid, max_txid), offset, size)

    async def v3_files(self) -> list[tuple[str, int, datetime]]:
        """Every file of Litestream 0.3's `<path>/generations/<id>/{snapshots,wal}/`, keys relative
        to the replica path."""
        top = posixpath.join(self.path, "generations")

        def listing(sftp: Any) -> list[tuple[str, int, datetime]]:
            out: list[tuple[str, int, datetime]] = []
            try:
                generations = [a.filename for a in sftp.listdir_attr(top) if stat.S_ISDIR(a.st_mode or 0)]
            except FileNotFoundError:
                return out
            for gen in generations:
                for sub in ("snapshots", "wal"):
                    try:
                        attrs = sftp.listdir_attr(posixpath.join(top, gen, sub))
                    except FileNotFoundError:
                        continue
                    out += [
                        (f"generations/{gen}/{sub}/{a.filename}", a.st_size, datetime.fromtimestamp(a.st_mtime, tz=UTC))
                        for a in attrs
                        if stat.S_ISREG(a.st_mode or 0)
                    ]
            return out

        return await self.run(listing, f": list {top}")

    def open_v3_file(self, key: str) -> AsyncIterator[bytes]:
        """Stream one file listed by `v3_files`."""
        return self._read(posixpath.join(self.path, key), 0, None)

    def _read(self, path: str, offset: int, size: int | None) -> AsyncIterator[bytes]:
        """The bytes of the remote file `path` from `offset` (`size` of them, or to the end)."""

        def chunks() -> Iterator[bytes]:
            import paramiko

            # This generator owns its SFTP channel until it is exhausted or closed.
            sftp = paramiko.SFTPClient.from_transport(self._connect())
            try:
                with sftp.open(path, "rb") as f:
                    length = f.stat().st_size
                    end = length if size is None else min(length, offset + size)
                    # readv pipelines the requests of one window; a window at a time bounds memory.
                    for start in range(offset, end, CHUNK):
                        stop = min(end, start + CHUNK)
                        reqs = [(p, min(READ_REQUEST, stop - p)) for p in range(start, stop, READ_REQUEST)]
                        yield b"".join(f.readv(reqs))
            finally:
                sftp.close()

        return iterate_in_thread(chunks, lambda exc: translate(exc, f"{self.url}: {path}"))

    async def write_ltx_file(self, level: int, min_txid: int, max_txid: int, src: BinaryIO) -> FileInfo:
        path = self.ltx_path(level, min_txid, max_txid)
        start = src.tell()

        def upload(sftp: Any) -> FileInfo:
            created = header_timestamp(src)
            _makedirs(sftp, posixpath.dirname(path))
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            try:
                size = _put(sftp, src, tmp, pipelined=self.concurrent_writes)
                # Whole-second mtime, as SFTP v3 carries it (Litestream's Chtimes gets the same).
                stamp = int(created.timestamp())
                sftp.utime(tmp, (stamp, stamp))
                # The plain rename (OpenSSH: link + unlink) refuses an existing target: a late
                # writer never replaces another agent's file.
                _SFTPLockFS(sftp).rename_exclusive(tmp, path)
            except BaseException:
                _remove_quietly(sftp, tmp)
                raise
            return FileInfo(level, min_txid, max_txid, size, created)

        try:
            return await self.run(upload, f": upload {path}")
        except PreconditionFailed:
            src.seek(start)
            return await settle_existing(self, level, min_txid, max_txid, src)

    async def delete_ltx_files(self, files: list[FileInfo]) -> None:
        paths = [self.ltx_path(f.level, f.min_txid, f.max_txid) for f in files]
        await self.run(lambda sftp: [_remove_quietly(sftp, p) for p in paths], ": delete")

    async def delete_all(self) -> None:
        await self.run(lambda sftp: _remove_tree(sftp, posixpath.join(self.path, "ltx")), ": delete")

    async def close(self) -> None:
        """Close the SSH connection."""
        if self._transport is not None:
            await asyncio.to_thread(self._transport.close)
            self._transport = None

    # --- lease object: best effort, by exclusive rename (see file.py) ------------------------------

    async def read_lock(self) -> tuple[bytes, str] | None:
        return await self.run(lambda sftp: lock_read(_SFTPLockFS(sftp), self.lock_path), f": {self.lock_path}")

    async def write_lock(self, body: bytes, if_match: str | None) -> str:
        return await self.run(
            lambda sftp: lock_write(_SFTPLockFS(sftp), self.lock_path, body, if_match), f": {self.lock_path}"
        )

    async def delete_lock(self, if_match: str) -> None:
        await self.run(lambda sftp: lock_delete(_SFTPLockFS(sftp), self.lock_path, if_match), f": {self.lock_path}")


def _makedirs(sftp: Any, path: str) -> None:
    """mkdir -p over SFTP."""
    try:
        if stat.S_ISDIR(sftp.stat(path).st_mode or 0):
            return
    except FileNotFoundError:
        pass
    parent = posixpath.dirname(path)
    if parent and parent != path:
        _makedirs(sftp, parent)
    try:
        sftp.mkdir(path)
    except OSError:
        # Lost a race with a concurrent writer creating the same directory: fine if it exists now.
        if not stat.S_ISDIR(sftp.stat(path).st_mode or 0):
            raise


def _remove_quietly(sftp: Any, path: str) -> None:
    try:
        sftp.remove(path)
    except FileNotFoundError:
        pass


def _remove_tree(sftp: Any, path: str) -> None:
    try:
        entries = sftp.listdir_attr(path)
    except FileNotFoundError:
        return
    for entry in entries:
        child = posixpath.join(path, entry.filename)
        if stat.S_ISDIR(entry.st_mode or 0):
            _remove_tree(sftp, child)
        else:
            _remove_quietly(sftp, child)
    sftp.rmdir(path)


class _SFTPLockFS:
    """LockFS over SFTP. OpenSSH's plain rename is link()+unlink(): it refuses an existing target."""

    def __init__(self, sftp: Any) -> None:
        self.sftp = sftp

    def read(self, path: str) -> bytes:
        with self.sftp.open(path, "rb") as f:
            return bytes(f.read())

    def create_exclusive(self, path: str, body: bytes) -> None:
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with self.sftp.open(tmp, "wb") as f:
            f.write(body)
        try:
            self.rename_exclusive(tmp, path)
        except PreconditionFailed:
            _remove_quietly(self.sftp, tmp)
            raise FileExistsError(path) from None
        except BaseException:
            _remove_quietly(self.sftp, tmp)
            raise

    def rename_exclusive(self, tmp: str, path: str) -> None:
        """Rename `tmp` to `path` unless `path` exists (PreconditionFailed then)."""
        try:
            self.sftp.rename(tmp, path)
        except OSError:
            try:
                self.sftp.stat(path)
            except FileNotFoundError:
                raise StorageError(f"{path}: rename failed") from None
            raise PreconditionFailed(f"{path}: exists") from None

    def rename(self, src: str, dst: str) -> None:
        self.sftp.rename(src, dst)

    def remove(self, path: str) -> None:
        self.sftp.remove(path)
