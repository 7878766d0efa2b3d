"""Single-writer lease on a replica: `<path>/lock.json`, as Litestream's S3 leaser writes it.

Body: `{"generation": N, "expires_at": "<RFC3339>", "owner": "hostname:pid:instance"}`. A lease is taken
only when there is none or the current one has expired, with a conditional write (If-None-Match /
If-Match on S3, generation match on GCS, ETags on Azure, exclusive create + rename on file and
SFTP, best effort on NATS), so of two agents racing for one replica exactly one wins. The holder
renews at half the TTL; a renewal that loses the condition means another agent took over.
Every write of the agent to the replica goes through `FencedClient`, which refuses it once the
lease is no longer provably held.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from .storage import (
    FileInfo,
    PreconditionFailed,
    ReplicaClient,
    SealedWriter,
    StorageError,
    format_timestamp,
    ltx_files_by_level,
    parse_timestamp,
    sealed_writer,
)

log = logging.getLogger("lifeboat.lease")

# Two minutes: renewed at half of it, the lease costs one PUT a minute, against a PUT a second for
# the replica's own files at the default sync interval. The price is the wait before an agent on
# another host (or in another container) takes over from one that died without releasing it.
DEFAULT_TTL = 120.0
# The lease counts as ours until `margin` before it expires in the store: the other agents judge its
# expiry by their own clocks, and this much skew between the nodes is tolerated.
MARGIN_FRACTION = 1 / 6
# Renew once half the TTL has passed since the last renewal was sent: two writes of the lease object
# per TTL, and a third of the TTL left (three retries ttl/10 apart) before the fence closes on a
# renewal that keeps failing. Other agents read only the lease object, so nothing else (an upload,
# say) can stand in for a renewal.
RENEW_FRACTION = 1 / 2


class LeaseHeldError(StorageError):
    """Another owner holds an unexpired lease on the replica."""

    def __init__(self, replica: str, owner: str, expires_at: datetime) -> None:
        super().__init__(
            f"replica {replica} is locked by {owner} until {format_timestamp(expires_at)} "
            "(another agent is replicating to it)"
        )
        self.owner = owner
        self.expires_at = expires_at


class LeaseLostError(StorageError):
    """The lease was taken over or removed while we believed we held it."""


@dataclass(frozen=True, slots=True)
class LeaseState:
    """The content of `lock.json`."""

    generation: int
    expires_at: datetime
    owner: str

    def encode(self) -> bytes:
        return json.dumps(
            {"generation": self.generation, "expires_at": format_timestamp(self.expires_at), "owner": self.owner}
        ).encode()

    @classmethod
    def decode(cls, body: bytes) -> LeaseState:
        try:
            doc = json.loads(body)
            return cls(int(doc["generation"]), parse_timestamp(str(doc["expires_at"])), str(doc["owner"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"lock.json is not a lease: {exc}") from None


def default_owner() -> str:
    """A name no other agent can have: `hostname:pid:instance`.

    `hostname:pid` is how Litestream names lease owners, and what an operator reads; it is not unique
    (hostNetwork pods share the node's hostname, and a pod rescheduled under its old name often gets
    the same PID). The instance adds where this process lives (boot and PID namespace), when it
    started, and a random token.
    """
    return f"{socket.gethostname()}:{os.getpid()}:{_namespace()}.{_start_time(os.getpid())}.{secrets.token_hex(4)}"


def _namespace() -> str:
    """This boot's PID namespace, hashed short: PIDs are comparable only within it ("" if unknown)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return hashlib.sha256(f"{boot}/{pidns}".encode()).hexdigest()[:8]


def _start_time(pid: int) -> str:
    """The start time of process `pid` in clock ticks since boot ("" if there is no such process)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: count fields after the last ")".
    return stat.rpartition(")")[2].split()[19]


def _local_owner_alive(owner: str) -> bool | None:
    """Whether `owner`, a process of this host, still runs; None when that cannot be told (another
    host, another PID namespace such as a previous container of this pod, another name format)."""
    host, pid, instance = [*owner.split(":"), "", ""][:3]
    ns, _, rest = instance.partition(".")
    started = rest.partition(".")[0]
    if host != socket.gethostname() or not pid.isdigit() or not ns or ns != _namespace():
        return None
    # A PID reused by another process since is dead for the owner too.
    return _start_time(int(pid)) == started


class Lease:
    """A lease on one replica: `acquire`, then `keep` it renewed, then `release`.

    Ours is provable only until `deadline`: the last successful write of the lease object (timed
    from before the request left) plus the TTL, less the margin. After that another agent may have
    taken the replica over without our knowing; `check` says so, and `FencedClient` refuses writes.
    """

    def __init__(self, client: ReplicaClient, owner: str | None = None, ttl: float = DEFAULT_TTL) -> None:
        self.client = client
        self.owner = owner or default_owner()
        self.ttl = ttl
        self.state: LeaseState | None = None
        self.deadline = 0.0  # time.monotonic() until which the lease is provably ours
        self.lost: str | None = None  # why the lease is gone for good (taken over, renewal broken)
        self._tag: str | None = None

    def _next(self, generation: int) -> LeaseState:
        return LeaseState(generation, datetime.now(UTC) + timedelta(seconds=self.ttl), self.owner)

    @property
    def held(self) -> bool:
        """True while the lease is provably ours."""
        return self.lost is None and self.state is not None and time.monotonic() < self.deadline

    def check(self) -> None:
        """Raise LeaseLostError unless the lease is provably ours: the fence before every write."""
        if self.held:
            return
        if self.lost is not None:
            raise LeaseLostError(self.lost)
        if self.state is None:
            raise LeaseLostError(f"replica {self.client!r}: no lease held; write refused")
        raise LeaseLostError(
            f"replica {self.client!r}: lease not renewed for {self.ttl * (1 - MARGIN_FRACTION):.0f}s "
            "(it may have expired and been taken over); write refused until a renewal succeeds"
        )

    async def _write(self, state: LeaseState, tag: str | None) -> None:
        """Write `state` if the lease object is still version `tag`; on success it is ours until the deadline."""
        sent = time.monotonic()
        body = state.encode()
        try:
            self._tag = await self.client.write_lock(body, tag)
        except PreconditionFailed:
            # Our own earlier attempt may have landed with its answer lost: then the object holds
            # exactly our body (its expiry is unique to the microsecond) and is still ours.
            current = await self.client.read_lock()
            if current is None or current[0] != body:
                raise
            self._tag = current[1]
        self.state = state
        self.deadline = sent + self.ttl * (1 - MARGIN_FRACTION)

    async def acquire(self, patience: float = 0.0) -> LeaseState:
        """Take the lease; raises LeaseHeldError naming the holder and its expiry.

        A crashed agent of this host and PID namespace is taken over at once. A holder of this
        host whose liveness cannot be told (a previous container of this pod ran in a PID namespace
        of its own) is waited for if its lease expires within `patience` seconds: unrenewed by
        then, it is gone, and the lease is taken over.
        """
        current = await self.client.read_lock()
        tag: str | None = None
        generation = 1
        if current is not None:
            body, tag = current
            held = LeaseState.decode(body)
            remaining = (held.expires_at - datetime.now(UTC)).total_seconds()
            alive = _local_owner_alive(held.owner)
            if remaining > 0 and held.owner != self.owner and alive is not False:
                local = held.owner.partition(":")[0] == socket.gethostname()
                if alive or not local or remaining > patience:
                    raise LeaseHeldError(repr(self.client), held.owner, held.expires_at)
                log.info(
                    "replica %s: lease held by %s, another process of this host; taking it over if it "
                    "is not renewed within %.0fs", self.client, held.owner, remaining,
                )
                await asyncio.sleep(remaining)
                return await self.acquire()
            generation = held.generation + 1
        state = self._next(generation)
        try:
            await self._write(state, tag)
        except PreconditionFailed:
            # Someone else wrote first: report who holds it now.
            now = await self.client.read_lock()
            if now is None:
                raise LeaseHeldError(repr(self.client), "another agent", datetime.now(UTC)) from None
            winner = LeaseState.decode(now[0])
            raise LeaseHeldError(repr(self.client), winner.owner, winner.expires_at) from None
        self.lost = None
        return state

    async def renew(self) -> LeaseState:
        """Extend the lease; raises LeaseLostError when another agent took it over."""
        if self.lost is not None:
            raise LeaseLostError(self.lost)
        if self.state is None or self._tag is None:
            raise LeaseLostError(f"replica {self.client!r}: no lease to renew")
        state = self._next(self.state.generation)
        try:
            await self._write(state, self._tag)
        except PreconditionFailed:
            self._tag = None
            self.lost = f"replica {self.client!r}: lease lost (taken over by another agent)"
            raise LeaseLostError(self.lost) from None
        return state

    def renewal_due_in(self) -> float:
        """Seconds until the next renewal: RENEW_FRACTION of the TTL after the last one was sent."""
        sent = self.deadline - self.ttl * (1 - MARGIN_FRACTION)
        return max(0.0, sent + self.ttl * RENEW_FRACTION - time.monotonic())

    async def keep(self, stop: asyncio.Event) -> None:
        """Renew at half the TTL until `stop` (see `renew_step`)."""
        wait: float | None = self.renewal_due_in()
        while wait is not None and not stop.is_set():
            await asyncio.sleep(wait)
            wait = await self.renew_step(stop)

    async def renew_step(self, stop: asyncio.Event) -> float | None:
        """One renewal; the seconds until the next one is due, or None once the lease is gone. A
        takeover, or any error that is not a storage failure, ends the lease for good (`lost`) and
        sets `stop`: the agent never goes on unfenced. Storage failures are retried every ttl/10;
        past the deadline the fence holds writes back meanwhile."""
        try:
            await self.renew()
            return self.renewal_due_in()
        except LeaseLostError as exc:
            # Another agent owns the replica now: writing on would fork its history.
            self._give_up(str(exc), stop)
            return None
        except StorageError as exc:
            log.warning("replica %s: lease renewal failed: %s", self.client, exc)
            return self.ttl / 10
        except Exception as exc:
            self._give_up(f"replica {self.client!r}: lease renewal failed: {type(exc).__name__}: {exc}", stop)
            return None

    def _give_up(self, reason: str, stop: asyncio.Event) -> None:
        self.lost = reason
        log.error("%s; stopping replication", reason)
        stop.set()

    async def release(self) -> None:
        """Give the lease up (a lease already taken over is left alone)."""
        if self._tag is None:
            return
        tag, self.state, self._tag = self._tag, None, None
        self.deadline = 0.0
        try:
            await self.client.delete_lock(tag)
        except PreconditionFailed:
            pass


class FencedClient:
    """The replica client of an agent: every write and delete first checks the lease is provably
    ours (`Lease.check`), so an agent that lost it, or cannot prove it still holds it, changes
    nothing in the replica. Reads, and the lease object's own conditional writes, pass through."""

    def __init__(self, inner: ReplicaClient, lease: Lease) -> None:
        self.inner = inner
        self.lease = lease
        self.type = inner.type

    def __repr__(self) -> str:
        return repr(self.inner)

    async def init(self) -> None:
        await self.inner.init()

    async def ltx_files(self, level: int, seek: int = 0, use_metadata: bool = False) -> list[FileInfo]:
        return await self.inner.ltx_files(level, seek, use_metadata)

    async def all_ltx_files(self) -> dict[int, list[FileInfo]]:
        """Every level's files, as the wrapped client lists them (see `storage.ltx_files_by_level`)."""
        return await ltx_files_by_level(self.inner)

    def open_ltx_file(
        self, level: int, min_txid: int, max_txid: int, offset: int = 0, size: int | None = None
    ) -> AsyncIterator[bytes]:
        return self.inner.open_ltx_file(level, min_txid, max_txid, offset, size)

    async def write_ltx_file(self, level: int, min_txid: int, max_txid: int, src: BinaryIO) -> FileInfo:
        self.lease.check()
        return await self.inner.write_ltx_file(level, min_txid, max_txid, src)

    def sealed_writer(self) -> SealedWriter | None:
        """The wrapped client's blocking writer (see `storage.sealed_writer`), fenced like `write_ltx_file`."""
        inner = sealed_writer(self.inner)
        if inner is None:
            return None

        def write(level: int, min_txid: int, max_txid: int, path: Path) -> FileInfo | None:
            self.lease.check()
            return inner(level, min_txid, max_txid, path)

        return write

    async def delete_ltx_files(self, files: list[FileInfo]) -> None:
        self.lease.check()
        await self.inner.delete_ltx_files(files)

    async def delete_all(self) -> None:
        self.lease.check()
        await self.inner.delete_all()

    async def close(self) -> None:
        await self.inner.close()

    async def read_lock(self) -> tuple[bytes, str] | None:
        return await self.inner.read_lock()

    async def write_lock(self, body: bytes, if_match: str | None) -> str:
        return await self.inner.write_lock(body, if_match)

    async def delete_lock(self, if_match: str) -> None:
        await self.inner.delete_lock(if_match)
