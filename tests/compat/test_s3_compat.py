"""Cross-checks with the real `litestream` 0.5.17 on object stores (issue #4): `litestream restore`
restores what `lifeboat replicate` wrote, and `lifeboat restore` restores what `litestream replicate`
wrote, with a writer process committing during replication. S3 (moto), Azure Blob (Azurite), SFTP
(sshd) and NATS JetStream. GCS is left out: litestream's Go client reads objects through a path
fake-gcs-server answers 404 (see the project's SERVICES notes), so that cross-check cannot run here.

Both tools read the same config file. For litestream's S3 runs AWS_CA_BUNDLE must be unset (set on
these machines, it makes litestream fail with "unable to add custom RootCAs") and the credentials
come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    Agent,
    assert_same_db,
    create_db,
    lifeboat,
    litestream,
    no_traceback,
    ok,
    start_writer,
    wait_writer,
)
from lifeboat.agent.storage import new_client

# The storage suite's fixtures (servers started by .ci/services.sh, buckets created), loaded under
# a name of their own: `conftest` is already taken by tests/conftest.py here.
_spec = importlib.util.spec_from_file_location(
    "lifeboat_storage_conftest", Path(__file__).resolve().parents[1] / "storage" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
sc = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
if not hasattr(sc, "servers"):
    _spec.loader.exec_module(sc)
servers = sc.servers  # the session fixture, registered in this module

BACKENDS = ["s3", "abs", "sftp", "nats"]


def _block(backend: str, name: str, srv: Any) -> dict[str, Any]:
    """The replica block both tools read (S3 credentials from the environment)."""
    if backend == "s3":
        return {
            "url": f"s3://{sc.BUCKET}/{name}",
            "endpoint": sc.S3_ENDPOINT,
            "region": "us-east-1",
            "force-path-style": True,
        }
    if backend == "abs":
        return {
            "url": f"abs://{sc.AZURE_ACCOUNT}@{sc.BUCKET}/{name}",
            "endpoint": sc.AZURE_ENDPOINT,
            "account-key": sc.AZURE_KEY,
        }
    if backend == "sftp":
        return {
            "url": f"sftp://{srv.user}@127.0.0.1:{sc.PORTS['sftp']}{srv.root}/{name}",
            "key-path": str(srv.client_key),
            "host-key": srv.host_key_line,
        }
    if backend == "nats":
        return {"url": f"nats://127.0.0.1:{sc.PORTS['nats']}/{name}"}
    raise AssertionError(backend)


def _write_yaml(path: Path, db: Path, block: dict[str, Any]) -> Path:
    lines = ["dbs:", f"  - path: {json.dumps(str(db))}", "    replica:"]
    lines += [f"      {k}: {json.dumps(v)}" for k, v in block.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
async def replica(
    servers: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[[str], Awaitable[dict[str, Any]]]]:
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    made: list[str] = []

    async def make(backend: str) -> dict[str, Any]:
        name = f"compat-{uuid.uuid4().hex[:12]}"
        if backend == "nats":
            await sc.nats_bucket(name, create=True)
            made.append(name)
        return _block(backend, name, servers)

    yield make
    for name in made:
        await sc.nats_bucket(name, create=False)


async def _wait_started(block: dict[str, Any], agent: Agent, timeout: float = 30) -> None:
    """Until the replica holds its first L0 file."""
    client = new_client(block)
    deadline = time.monotonic() + timeout
    try:
        while not await client.ltx_files(0):
            assert agent.alive(), f"replicate exited early ({agent.proc.returncode}):\n{agent.output()}"
            assert time.monotonic() < deadline, f"no L0 file in {client!r}:\n{agent.output()}"
            await asyncio.sleep(0.2)
    finally:
        await client.close()


async def _replicate(agent: Agent, block: dict[str, Any], db: Path) -> str:
    with agent:
        await _wait_started(block, agent)
        writer = start_writer(db, 1, 40, rows=20, pause=0.01)
        wait_writer(writer)
        code = agent.stop()
        log = agent.output()
    assert code == 0, f"replicate exited {code}:\n{log}"
    return log


@pytest.mark.parametrize("backend", BACKENDS)
async def test_litestream_restores_lifeboat_replica(
    backend: str, tmp_path: Path, replica: Callable[[str], Awaitable[dict[str, Any]]]
) -> None:
    block = await replica(backend)
    db = tmp_path / "app.db"
    create_db(db)
    cfg = _write_yaml(tmp_path / "litestream.yml", db, block)
    log = await _replicate(Agent.lifeboat("-config", str(cfg), log=tmp_path / "lifeboat.log"), block, db)
    no_traceback(log)

    out = tmp_path / "restored-by-litestream.db"
    ok(litestream("restore", "-o", str(out), "-config", str(cfg), str(db)))
    assert_same_db(out, db)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_lifeboat_restores_litestream_replica(
    backend: str, tmp_path: Path, replica: Callable[[str], Awaitable[dict[str, Any]]]
) -> None:
    block = await replica(backend)
    db = tmp_path / "app.db"
    create_db(db)
    cfg = _write_yaml(tmp_path / "litestream.yml", db, block)
    await _replicate(Agent.litestream("-config", str(cfg), log=tmp_path / "litestream.log"), block, db)

    out = tmp_path / "restored-by-lifeboat.db"
    proc = ok(lifeboat("restore", "-o", str(out), "-config", str(cfg), str(db)))
    no_traceback(proc.stderr)
    assert_same_db(out, db)
