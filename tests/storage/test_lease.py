"""The single-writer lease, on every backend's real server."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from lifeboat.agent.lease import Lease, LeaseHeldError, LeaseLostError, LeaseState
from lifeboat.agent.storage import PreconditionFailed, new_client

# Backends whose store offers a real conditional write (NATS's lease is best effort).
ATOMIC = ["file", "s3", "gs", "abs", "sftp"]


async def test_second_agent_is_refused_while_the_first_holds_the_lease(client: Any) -> None:
    first = Lease(client, owner="pod-a:1", ttl=30)
    second = Lease(client, owner="pod-b:2", ttl=30)
    state = await first.acquire()
    assert state.generation == 1

    with pytest.raises(LeaseHeldError) as refused:
        await second.acquire()
    assert "pod-a:1" in str(refused.value) and repr(client) in str(refused.value)
    assert refused.value.expires_at == state.expires_at

    body, _ = await client.read_lock()
    doc = json.loads(body)
    assert doc["owner"] == "pod-a:1" and doc["generation"] == 1
    assert datetime.fromisoformat(doc["expires_at"].replace("Z", "+00:00")) > datetime.now(UTC)

    renewed = await first.renew()
    assert renewed.generation == 1 and renewed.expires_at >= state.expires_at
    with pytest.raises(LeaseHeldError):
        await second.acquire()

    await first.release()
    assert await client.read_lock() is None
    assert (await second.acquire()).generation == 1


async def test_takeover_after_expiry(client: Any) -> None:
    first = Lease(client, owner="pod-a:1", ttl=0.5)
    await first.acquire()
    await asyncio.sleep(0.8)
    second = Lease(client, owner="pod-b:2", ttl=30)
    assert (await second.acquire()).generation == 2
    # The old holder finds out at its next renewal, and its release leaves the new lease alone.
    with pytest.raises(LeaseLostError):
        await first.renew()
    await first.release()
    body, _ = await client.read_lock()
    assert json.loads(body)["owner"] == "pod-b:2"


async def test_stale_version_tags_lose(client: Any) -> None:
    assert await client.read_lock() is None
    tag1 = await client.write_lock(b'{"v": 1}', None)
    with pytest.raises(PreconditionFailed):
        await client.write_lock(b'{"v": 2}', None)
    tag2 = await client.write_lock(b'{"v": 2}', tag1)
    with pytest.raises(PreconditionFailed):
        await client.write_lock(b'{"v": 3}', tag1)
    assert await client.read_lock() == (b'{"v": 2}', tag2)
    with pytest.raises(PreconditionFailed):
        await client.delete_lock(tag1)
    await client.delete_lock(tag2)
    assert await client.read_lock() is None
    await client.delete_lock(tag2)  # already gone


@pytest.mark.parametrize("kind", ATOMIC)
async def test_racing_agents_exactly_one_wins(kind: str, make_settings: Any) -> None:
    settings = await make_settings(kind)
    clients = [new_client(settings) for _ in range(6)]
    try:
        for c in clients:
            await c.init()
        leases = [Lease(c, owner=f"pod-{i}:1") for i, c in enumerate(clients)]
        results = await asyncio.gather(*(lease.acquire() for lease in leases), return_exceptions=True)
        winners = [r for r in results if not isinstance(r, BaseException)]
        assert len(winners) == 1, results
        assert all(isinstance(r, LeaseHeldError) for r in results if r not in winners)
    finally:
        for c in clients:
            await c.close()


async def test_agents_sharing_a_hostname_and_pid_are_different_owners(client: Any) -> None:
    """hostNetwork pods, or a pod rescheduled under its old name: one hostname, the same PID."""
    first, second = Lease(client), Lease(client)
    assert first.owner != second.owner
    await first.acquire()
    with pytest.raises(LeaseHeldError):
        await second.acquire()
    body, _ = await client.read_lock()
    assert json.loads(body)["owner"] == first.owner


async def test_lease_of_a_dead_local_process_is_taken_over_at_once(client: Any) -> None:
    """A SIGKILLed agent of this host and PID namespace leaves an unexpired lease behind: the
    next agent need not wait for it to expire."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from lifeboat.agent.lease import default_owner; print(default_owner())",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    dead = out.decode().strip()
    state = LeaseState(3, datetime.now(UTC) + timedelta(minutes=5), dead)
    await client.write_lock(state.encode(), None)
    assert (await Lease(client).acquire()).generation == 4


async def test_unrenewed_lease_of_another_container_of_this_host_is_waited_out(client: Any) -> None:
    """A previous container of this pod (its own PID namespace: not provably dead) left a lease:
    an agent that is patient enough takes it over once it expires unrenewed."""
    other = f"{socket.gethostname()}:1:00000000.1.abcd"
    await client.write_lock(LeaseState(5, datetime.now(UTC) + timedelta(seconds=1.5), other).encode(), None)
    with pytest.raises(LeaseHeldError):
        await Lease(client).acquire()
    assert (await Lease(client, ttl=30).acquire(patience=30)).generation == 6


async def test_holder_renews_twice_per_ttl(make_settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each renewal is a PUT of the lease object: the holder writes it at half the TTL (twice per
    TTL), not more often, and stays provably the holder throughout. Load can only delay renewals,
    so the count is bounded from above by the elapsed time."""
    ttl, ttls = 4.0, 3
    client = new_client(await make_settings("s3"))
    await client.init()
    lease = Lease(client, owner="pod-a:1", ttl=ttl)
    renewals = 0
    write_lock = client.write_lock

    async def counted(body: bytes, if_match: str | None) -> str:
        nonlocal renewals
        renewals += 1
        return await write_lock(body, if_match)

    try:
        await lease.acquire()
        monkeypatch.setattr(client, "write_lock", counted)
        stop = asyncio.Event()
        keeper = asyncio.create_task(lease.keep(stop))
        await asyncio.sleep(ttl * ttls)
        stop.set()
        keeper.cancel()
        assert 2 <= renewals <= 2 * ttls, renewals
        assert lease.lost is None
    finally:
        await lease.release()
        await client.close()
