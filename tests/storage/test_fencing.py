"""Lease fencing on the real servers: an agent that no longer provably holds its replica's lease
writes nothing more to it, and LTX files are written create-only, so a late write never replaces
another agent's file, while our own retry of an identical upload still succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from faults import FaultProxy, _error_xml, _Handler
from helpers import create_db, write_batch
from lifeboat.agent import ltx
from lifeboat.agent.storage import PreconditionFailed, format_timestamp, new_client, read_ltx_file
from lifeboat.agent.store import DatabaseSpec, Store
from replica_helpers import BUCKET, PORTS

# Backends whose store can refuse to replace an existing object (NATS cannot: see nats.py).
CONDITIONAL = ["file", "s3", "gs", "abs", "sftp"]
TTL = 3.0  # short enough that a test sees a lease expire, long enough for a loaded machine


def ltx_file(txid: int, fill: int, *, ts_ms: int = 1_700_000_000_000) -> bytes:
    """A real one-page LTX file for `txid` whose page is filled with `fill`."""
    out = io.BytesIO()
    header = ltx.Header(page_size=4096, commit=1, min_txid=txid, max_txid=txid, timestamp=ts_ms)
    ltx.encode(header, [(1, bytes([fill]) * 4096)], out)
    return out.getvalue()


async def put(client: Any, txid: int, data: bytes, level: int = 0) -> Any:
    return await client.write_ltx_file(level, txid, txid, io.BytesIO(data))


async def count_files(client: Any) -> dict[int, int]:
    """LTX files per level (every level a replica can hold)."""
    counts = {level: len(await client.ltx_files(level)) for level in range(10)}
    return {level: n for level, n in counts.items() if n}


@pytest.mark.parametrize("kind", CONDITIONAL)
async def test_late_write_of_a_different_file_is_refused(kind: str, make_settings: Any) -> None:
    client = new_client(await make_settings(kind))
    try:
        await client.init()
        ours = ltx_file(5, 0xAA)
        await put(client, 5, ours)
        with pytest.raises(PreconditionFailed) as refused:
            await put(client, 5, ltx_file(5, 0xBB))
        assert "0000000000000005-0000000000000005.ltx" in str(refused.value)
        [info] = await client.ltx_files(0)
        assert await read_ltx_file(client, info) == ours
    finally:
        await client.close()


@pytest.mark.parametrize("kind", CONDITIONAL)
async def test_our_own_retry_of_an_identical_upload_succeeds(kind: str, make_settings: Any) -> None:
    client = new_client(await make_settings(kind))
    try:
        await client.init()
        ours = ltx_file(7, 0x11)
        first = await put(client, 7, ours)
        again = await put(client, 7, ours)  # the response of the first was "lost"
        assert (again.size, again.created_at) == (first.size, first.created_at)
        [info] = await client.ltx_files(0)
        assert await read_ltx_file(client, info) == ours
    finally:
        await client.close()


@pytest.mark.parametrize("kind", CONDITIONAL)
async def test_rewrite_of_the_same_state_keeps_the_existing_file(kind: str, make_settings: Any) -> None:
    """A snapshot (or compaction) re-run at the same position differs only in its header timestamp:
    that is done already, and the file in the replica stays as it was."""
    client = new_client(await make_settings(kind))
    try:
        await client.init()
        first = ltx_file(9, 0x22, ts_ms=1_700_000_000_000)
        await put(client, 9, first, level=9)
        info = await put(client, 9, ltx_file(9, 0x22, ts_ms=1_700_000_555_000), level=9)
        assert info.created_at == datetime.fromtimestamp(1_700_000_000, UTC)
        [stored] = await client.ltx_files(9)
        assert await read_ltx_file(client, stored) == first
    finally:
        await client.close()


# --- the agent ---------------------------------------------------------------------------------


def _spec(db: Path, settings: dict[str, Any]) -> DatabaseSpec:
    return DatabaseSpec(path=str(db), client=new_client(settings), monitor_interval=0.05, sync_interval=0.05)


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Any]:
    """Factory: an opened in-process agent on `tmp_path/app.db` with a short lease TTL, running
    until the test ends (or it stops itself)."""
    made: list[tuple[Store, asyncio.Event, asyncio.Task[None]]] = []

    async def start(settings: dict[str, Any], *, ttl: float = TTL) -> tuple[Store, asyncio.Event, Any]:
        db = tmp_path / "app.db"
        create_db(db)
        store = Store([_spec(db, settings)])
        runner = store.runners[0]
        runner.lease.ttl = ttl
        await store.open()
        stop = asyncio.Event()
        task = asyncio.create_task(store.run(stop, shutdown_timeout=10))
        made.append((store, stop, task))
        await until(lambda: runner.replica.pos >= runner.db.pos > 0, "the initial upload")
        return store, stop, task

    yield start
    for _store, stop, task in made:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 60)


async def until(pred: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def take_over(client: Any, owner: str = "other-pod:1:x") -> None:
    """What a second agent does once the lease has expired (or an operator rewriting lock.json)."""
    current = await client.read_lock()
    assert current is not None
    doc = json.loads(current[0])
    doc.update(owner=owner, generation=doc["generation"] + 1)
    doc["expires_at"] = format_timestamp(datetime.now(UTC) + timedelta(minutes=5))
    await client.write_lock(json.dumps(doc).encode(), current[1])


@pytest.mark.parametrize("kind", ["file", "s3", "gs", "abs"])
async def test_no_final_sync_after_a_takeover(kind: str, make_settings: Any, tmp_path: Path, agent: Any) -> None:
    """Another agent took the replica over; ours is stopped before its next renewal noticed. Its
    final sync must not ship what the application wrote since: the new owner's history is the one."""
    settings = await make_settings(kind)
    # No renewal comes before the stop, and nothing is captured: only the shutdown can notice.
    store, stop, task = await agent(settings, ttl=600.0)
    store.runners[0].paused = True
    observer = new_client(settings)
    try:
        await take_over(observer)
        before = await count_files(observer)
        write_batch(tmp_path / "app.db", 1)
        stop.set()
        await asyncio.wait_for(task, 60)
        assert await count_files(observer) == before
        assert store.lost_lease
        body, _ = await observer.read_lock()
        assert json.loads(body)["owner"] == "other-pod:1:x", "the new owner's lease was released"
    finally:
        await observer.close()


async def test_renewal_that_raises_stops_the_agent(tmp_path: Path, agent: Any, caplog: Any) -> None:
    """An unexpected error in the renewal task (here the lease object turned into a directory) stops
    the agent with an error naming it: it never goes on unfenced."""
    settings = {"url": f"file://{tmp_path / 'replica'}"}
    store, _stop, task = await agent(settings)
    lock = tmp_path / "replica" / "lock.json"
    lock.unlink()
    lock.mkdir()
    await asyncio.wait_for(task, 30)
    assert store.lost_lease
    error = store.runners[0].status()["error"]
    assert "lease renewal failed" in error and "IsADirectoryError" in error, error
    assert any("lease renewal failed" in r.getMessage() for r in caplog.records)
    files = await count_files(new_client(settings))
    write_batch(tmp_path / "app.db", 1)
    assert await count_files(new_client(settings)) == files


class ScriptedProxy(FaultProxy):
    """A proxy in front of moto: 503 to every request on a lease object while `lock_down`; with
    `lose_next_answer`, the next LTX upload reaches moto but its answer is lost (connection reset)."""

    def __init__(self) -> None:
        super().__init__(PORTS["s3"])
        self.lock_down = False
        self.lose_next_answer = False
        self.RequestHandlerClass = _ScriptedHandler


class _ScriptedHandler(_Handler):
    server: ScriptedProxy

    def _forward(self) -> None:
        key = self.path.split("?")[0]
        if self.server.lock_down and key.endswith("/lock.json"):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            return self._reply(503, _error_xml("ServiceUnavailable"))
        if self.server.lose_next_answer and self.command == "PUT" and key.endswith(".ltx"):
            self.server.lose_next_answer = False
            self.wfile = io.BytesIO()  # moto stores the object; its answer goes nowhere
            super()._forward()
            return self._reset()
        return super()._forward()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


def _s3_settings(endpoint: str, name: str) -> dict[str, Any]:
    return {
        "url": f"s3://{BUCKET}/{name}?endpoint={endpoint}&region=us-east-1",
        "access-key-id": "test",
        "secret-access-key": "test",
    }


async def test_upload_whose_answer_was_lost_is_retried_to_success(servers: Any) -> None:
    """The PUT landed but its answer did not: the SDK's retry meets our own object (412 on the
    create-only write), which is recognised as ours instead of wedging replication."""
    with ScriptedProxy() as proxy:
        client = new_client(_s3_settings(proxy.endpoint, f"lost-{os.getpid()}-{time.monotonic_ns()}"))
        try:
            ours = ltx_file(3, 0x33)
            proxy.lose_next_answer = True
            info = await put(client, 3, ours)
            assert not proxy.lose_next_answer, "the answer was not dropped"
            assert info.size == len(ours)
            [stored] = await client.ltx_files(0)
            assert await read_ltx_file(client, stored) == ours
        finally:
            await client.close()


async def test_no_write_once_renewals_fail_past_the_ttl(tmp_path: Path, agent: Any, servers: Any) -> None:
    """The lease cannot be renewed (its object is unreachable) while uploads would still work: once
    the lease may have expired, the agent writes nothing, and resumes only after a renewal proves
    that nobody took over."""
    with ScriptedProxy() as proxy:
        name = f"fence-{os.getpid()}-{time.monotonic_ns()}"
        store, stop, task = await agent(_s3_settings(proxy.endpoint, name))
        runner = store.runners[0]
        direct = new_client(_s3_settings(f"http://127.0.0.1:{PORTS['s3']}", name))
        try:
            proxy.lock_down = True
            await until(lambda: not runner.lease.held, "the lease to be past its deadline")
            before = await count_files(direct)
            txid = runner.db.pos
            write_batch(tmp_path / "app.db", 1)
            await until(lambda: runner.db.pos > txid, "the local capture")
            # Uploads take milliseconds here: several sync intervals without one is a refusal.
            for _ in range(40):
                await asyncio.sleep(0.05)
                assert await count_files(direct) == before, "a fenced agent uploaded"
            assert "lease" in (runner.status()["error"] or "")

            proxy.lock_down = False
            await until(lambda: runner.replica.pos == runner.db.pos, "uploads to resume after a renewal")
            assert not store.lost_lease
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)
            await direct.close()
