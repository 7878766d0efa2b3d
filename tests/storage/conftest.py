"""Fixtures for the storage suite: the five real servers, and one fresh replica per test and backend.

Servers listen on fixed loopback ports (started by `.ci/services.sh` in CI). For a local run the
session fixture runs that same script when a port is closed; if a server still cannot be started
the suite fails: a backend that was never exercised must not look green.

The ports, credentials and replica blocks live in `replica_helpers.py`; the names test modules still
import from here (`from conftest import PORTS, ...`) are the ones this module uses itself.
"""

from __future__ import annotations

import getpass
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from faults import FlakyProxy
from lifeboat.agent.storage import new_client
from replica_helpers import (
    AZURE_ACCOUNT,
    AZURE_ENDPOINT,
    AZURE_KEY,
    AZURE_KEY_VAR,
    BACKENDS,
    BUCKET,
    GCS_ENDPOINT,
    PORTS,
    S3_ENDPOINT,
    NewReplica,
    SFTPServer,
    env_for,
    listening,
    replica_block,
    replica_factory,
    s3_client,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def servers() -> Iterator[SFTPServer]:
    """Make sure all five servers listen; start the missing ones with `.ci/services.sh`."""
    if not all(listening(p) for p in PORTS.values()):
        proc = subprocess.run(["bash", str(REPO / ".ci" / "services.sh")], capture_output=True, text=True, timeout=600)
        closed = [name for name, port in PORTS.items() if not listening(port)]
        if proc.returncode != 0 or closed:
            pytest.fail(f"storage servers not running ({closed}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    sftp_dir = Path(os.environ.get("LIFEBOAT_TEST_SFTP_DIR") or REPO / ".ci-work" / "sftp")
    (sftp_dir / "root").mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        # google-cloud-storage talks to the emulator when this is set (and so do CLI subprocesses).
        mp.setenv("STORAGE_EMULATOR_HOST", GCS_ENDPOINT)
        _create_buckets()
        yield SFTPServer(sftp_dir, getpass.getuser())


def _create_buckets() -> None:
    """The shared bucket/container each object store backend's tests put their prefixes in."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient
    from google.api_core.exceptions import Conflict
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    s3_client().create_bucket(Bucket=BUCKET)
    try:
        gcs.Client(project="test", credentials=AnonymousCredentials()).create_bucket(BUCKET)
    except Conflict:
        pass
    try:
        BlobServiceClient(
            AZURE_ENDPOINT, credential={"account_name": AZURE_ACCOUNT, "account_key": AZURE_KEY}
        ).create_container(BUCKET)
    except ResourceExistsError:
        pass


def replica_settings(backend: str, name: str, servers: SFTPServer, tmp_path: Path) -> dict[str, Any]:
    """Client settings for a fresh replica `name` on `backend`: its `replica_block`, except that
    S3's endpoint and region go in the URL's query and its credentials inline (a client built in
    process reads no environment)."""
    if backend == "s3":
        return {
            "url": f"s3://{BUCKET}/{name}?endpoint={S3_ENDPOINT}&region=us-east-1",
            "access-key-id": "test",
            "secret-access-key": "test",
        }
    return replica_block(backend, name, servers, tmp_path)


@pytest.fixture
async def make_settings(servers: SFTPServer, tmp_path: Path) -> AsyncIterator[NewReplica]:
    """Factory: settings for a fresh, empty replica on a backend (NATS buckets made and removed)."""
    async with replica_factory("t", partial(replica_settings, servers=servers, tmp_path=tmp_path)) as make:
        yield make


@pytest.fixture
async def new_replica(
    servers: SFTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[NewReplica]:
    """Factory: the config block of a fresh replica on a backend for the CLI, credentials in the
    environment the CLI processes inherit and the Azure key as `${VAR}` (NATS stores made and removed)."""
    env_for(monkeypatch)
    block = partial(replica_block, servers=servers, tmp_path=tmp_path, azure_key=f"${{{AZURE_KEY_VAR}}}")
    async with replica_factory("cli", block) as make:
        yield make


@pytest.fixture
def faulty_s3(servers: SFTPServer) -> Iterator[FlakyProxy]:
    """A proxy in front of moto failing every third request (503 SlowDown or a reset, alternately)."""
    with FlakyProxy(PORTS["s3"]) as proxy:
        yield proxy


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each test using it runs once per backend."""
    return str(request.param)


@pytest.fixture
async def client(backend: str, make_settings: NewReplica) -> AsyncIterator[Any]:
    """An initialised client on a fresh replica of `backend`."""
    c = new_client(await make_settings(backend))
    await c.init()
    yield c
    await c.close()
