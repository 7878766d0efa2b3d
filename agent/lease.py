"""Single-writer lease on a replica: `<path>/lock.json`, as Litestream's S3 leaser writes it.

Body: `{"generation": N, "expires_at": "<RFC3339>", "owner": "hostname:pid"}`. A lease is taken
only when there is none or the current one has expired, with a conditional write (If-None-Match /
If-Match on S3, generation match on GCS, ETags on Azure, exclusive create + rename on file and
SFTP, best effort on NATS), so of two agents racing for one replica exactly one wins. The holder
renews well before expiry; a renewal that loses the condition means another agent took over.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .storage import PreconditionFailed, ReplicaClient, StorageError, format_timestamp, parse_timestamp

DEFAULT_TTL = 30.0


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
    """`hostname:pid`, as Litestream names lease owners."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _is_dead_local(owner: str) -> bool:
    """A lease left by a process of this host that no longer exists (a crash, a SIGKILL) is stale."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Lease:
    """A lease on one replica. `acquire`, then `renew` at least every ttl/3, then `release`."""

    def __init__(self, client: ReplicaClient, owner: str | None = None, ttl: float = DEFAULT_TTL) -> None:
        self.client = client
        self.owner = owner or default_owner()
        self.ttl = ttl
        self.state: LeaseState | None = None
        self._tag: str | None = None

    def _next(self, generation: int) -> LeaseState:
        return LeaseState(generation, datetime.now(UTC) + timedelta(seconds=self.ttl), self.owner)

    @property
    def held(self) -> bool:
        """True while we hold an unexpired lease (as far as we know)."""
        return self.state is not None and self.state.expires_at > datetime.now(UTC)

    async def acquire(self) -> LeaseState:
        """Take the lease; raises LeaseHeldError naming the holder and its expiry."""
        current = await self.client.read_lock()
        tag: str | None = None
        generation = 1
        if current is not None:
            body, tag = current
            held = LeaseState.decode(body)
            # Our own unexpired lease (a restart of the same pid is impossible) is taken back too.
            if held.expires_at > datetime.now(UTC) and held.owner != self.owner and not _is_dead_local(held.owner):
                raise LeaseHeldError(repr(self.client), held.owner, held.expires_at)
            generation = held.generation + 1
        state = self._next(generation)
        try:
            self._tag = await self.client.write_lock(state.encode(), tag)
        except PreconditionFailed:
            # Someone else wrote first: report who holds it now.
            now = await self.client.read_lock()
            if now is None:
                raise LeaseHeldError(repr(self.client), "another agent", datetime.now(UTC)) from None
            winner = LeaseState.decode(now[0])
            raise LeaseHeldError(repr(self.client), winner.owner, winner.expires_at) from None
        self.state = state
        return state

    async def renew(self) -> LeaseState:
        """Extend the lease; raises LeaseLostError when another agent took it over."""
        if self.state is None or self._tag is None:
            raise LeaseLostError(f"replica {self.client!r}: no lease to renew")
        state = self._next(self.state.generation)
        try:
            self._tag = await self.client.write_lock(state.encode(), self._tag)
        except PreconditionFailed:
            self.state = self._tag = None
            raise LeaseLostError(f"replica {self.client!r}: lease lost (taken over by another agent)") from None
        self.state = state
        return state

    async def release(self) -> None:
        """Give the lease up (a lease already taken over is left alone)."""
        if self._tag is None:
            return
        tag, self.state, self._tag = self._tag, None, None
        try:
            await self.client.delete_lock(tag)
        except PreconditionFailed:
            pass
