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
import sys
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import pytest
from helpers import (
    Agent,
    assert_same_db,
    lifeboat,
    litestream,
    no_traceback,
    ok,
    start_writer,
    wait_writer,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "storage"))  # `replica_helpers`, for the conftest too

from replica_helpers import NewReplica, SFTPServer, new_db_config, remote, replica_block, replica_factory

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


@pytest.fixture
async def replica(servers: SFTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[NewReplica]:
    """Factory: the block of a fresh replica both tools read (S3 credentials from the environment,
    the Azure key inline; NATS stores made and removed)."""
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    async with replica_factory("compat", partial(replica_block, servers=servers, tmp_path=tmp_path)) as make:
        yield make


async def _wait_started(block: dict[str, Any], agent: Agent, timeout: float = 30) -> None:
    """Until the replica holds its first L0 file."""
    deadline = time.monotonic() + timeout
    async with remote(block) as client:
        while not await client.ltx_files(0):
            assert agent.alive(), f"replicate exited early ({agent.proc.returncode}):\n{agent.output()}"
            assert time.monotonic() < deadline, f"no L0 file in {client!r}:\n{agent.output()}"
            await asyncio.sleep(0.2)


async def _replicate(
    tool: Literal["lifeboat", "litestream"], backend: str, tmp_path: Path, replica: NewReplica
) -> tuple[Path, Path, str]:
    """`tool replicate` copies a new database to a fresh replica on `backend` while a writer commits,
    then stops on SIGTERM with exit 0; returns the database, the config both tools read, and the log."""
    block = await replica(backend)
    db, cfg = new_db_config(tmp_path, block)
    start = Agent.lifeboat if tool == "lifeboat" else Agent.litestream
    with start("-config", str(cfg), log=tmp_path / f"{tool}.log") as agent:
        await _wait_started(block, agent)
        writer = start_writer(db, 1, 40, rows=20, pause=0.01)
        wait_writer(writer)
        code = agent.stop()
        log = agent.output()
    assert code == 0, f"replicate exited {code}:\n{log}"
    return db, cfg, log


@pytest.mark.parametrize("backend", BACKENDS)
async def test_litestream_restores_lifeboat_replica(backend: str, tmp_path: Path, replica: NewReplica) -> None:
    db, cfg, log = await _replicate("lifeboat", backend, tmp_path, replica)
    no_traceback(log)

    out = tmp_path / "restored-by-litestream.db"
    ok(litestream("restore", "-o", str(out), "-config", str(cfg), str(db)))
    assert_same_db(out, db)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_lifeboat_restores_litestream_replica(backend: str, tmp_path: Path, replica: NewReplica) -> None:
    db, cfg, _ = await _replicate("litestream", backend, tmp_path, replica)

    out = tmp_path / "restored-by-lifeboat.db"
    proc = ok(lifeboat("restore", "-o", str(out), "-config", str(cfg), str(db)))
    no_traceback(proc.stderr)
    assert_same_db(out, db)
