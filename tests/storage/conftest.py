"""Fixtures for the storage suite: the five real servers, and one fresh replica per test and backend.

Servers listen on fixed loopback ports (started by `.ci/services.sh` in CI). For a local run the
session fixture runs that same script when a port is closed; if a server still cannot be started
the suite fails: a backend that was never exercised must not look green.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lifeboat.agent.storage import new_client

REPO = Path(__file__).resolve().parents[2]
PORTS = {"s3": 18001, "gs": 18003, "abs": 18004, "sftp": 18022, "nats": 18222}
BACKENDS = ["file", "s3", "gs", "abs", "sftp", "nats"]

S3_ENDPOINT = f"http://127.0.0.1:{PORTS['s3']}"
GCS_ENDPOINT = f"http://127.0.0.1:{PORTS['gs']}"
AZURE_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented by Microsoft).
AZURE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURE_ENDPOINT = f"http://127.0.0.1:{PORTS['abs']}/{AZURE_ACCOUNT}"
BUCKET = "lifeboat-test"


def listening(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class SFTPServer:
    """Where the test sshd's keys live and what the client logs in with."""

    dir: Path
    user: str

    @property
    def client_key(self) -> Path:
        return self.dir / "client_key"

    @property
    def host_key_line(self) -> str:
        return (self.dir / "host_key.pub").read_text().strip()

    @property
    def root(self) -> Path:
        return self.dir / "root"


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
    import boto3
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient
    from google.api_core.exceptions import Conflict
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    s3 = boto3.client(
        "s3",
        endpoint_url=S3_ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    s3.create_bucket(Bucket=BUCKET)
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


async def nats_bucket(name: str, *, create: bool) -> None:
    """Create (or delete) a JetStream object store on the test server."""
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(f"nats://127.0.0.1:{PORTS['nats']}")
    try:
        js = nc.jetstream()
        if create:
            await js.create_object_store(name)
        else:
            try:
                await js.delete_object_store(name)
            except NotFoundError:
                pass
    finally:
        await nc.close()


def replica_settings(backend: str, name: str, servers: SFTPServer, tmp_path: Path) -> dict[str, Any]:
    """A Litestream-style replica config block for a fresh replica `name` on `backend`."""
    if backend == "file":
        return {"url": f"file://{tmp_path / name}"}
    if backend == "s3":
        return {
            "url": f"s3://{BUCKET}/{name}?endpoint={S3_ENDPOINT}&region=us-east-1",
            "access-key-id": "test",
            "secret-access-key": "test",
        }
    if backend == "gs":
        return {"url": f"gs://{BUCKET}/{name}"}
    if backend == "abs":
        return {
            "url": f"abs://{AZURE_ACCOUNT}@{BUCKET}/{name}",
            "endpoint": AZURE_ENDPOINT,
            "account-key": AZURE_KEY,
        }
    if backend == "sftp":
        return {
            "url": f"sftp://{servers.user}@127.0.0.1:{PORTS['sftp']}{servers.root}/{name}",
            "key-path": str(servers.client_key),
            "host-key": servers.host_key_line,
        }
    if backend == "nats":
        return {"url": f"nats://127.0.0.1:{PORTS['nats']}/{name}"}
    raise AssertionError(backend)


@pytest.fixture
async def make_settings(
    servers: SFTPServer, tmp_path: Path
) -> AsyncIterator[Callable[[str], Awaitable[dict[str, Any]]]]:
    """Factory: settings for a fresh, empty replica on a backend (NATS buckets made and removed)."""
    buckets: list[str] = []

    async def make(backend: str) -> dict[str, Any]:
        name = f"t-{uuid.uuid4().hex[:12]}"
        if backend == "nats":
            await nats_bucket(name, create=True)
            buckets.append(name)
        return replica_settings(backend, name, servers, tmp_path)

    yield make
    for name in buckets:
        await nats_bucket(name, create=False)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each test using it runs once per backend."""
    return str(request.param)


@pytest.fixture
async def client(backend: str, make_settings: Callable[[str], Awaitable[dict[str, Any]]]) -> AsyncIterator[Any]:
    """An initialised client on a fresh replica of `backend`."""
    c = new_client(await make_settings(backend))
    await c.init()
    yield c
    await c.close()
