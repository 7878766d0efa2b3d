"""The test servers and fresh replicas on them, shared by tests/storage, tests/compat and `faults.py`.

Ports, credentials and buckets of the five servers `.ci/services.sh` starts; the SDK handles the
setup uses; the replica config block each backend takes, fresh replicas with their NATS stores made
and removed; config files, clients on a replica and waiting for it to catch up.

Imported as `replica_helpers` with tests/storage on sys.path (pytest puts it there for the storage
suite; tests/compat, tests/chaos and bench/soak.py insert it). No storage SDK is imported up front.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers import create_db
from lifeboat.agent.storage import new_client

if TYPE_CHECKING:
    import pytest
    from helpers import Agent

PORTS = {"s3": 18001, "gs": 18003, "abs": 18004, "sftp": 18022, "nats": 18222}
BACKENDS = ["file", "s3", "gs", "abs", "sftp", "nats"]

S3_ENDPOINT = f"http://127.0.0.1:{PORTS['s3']}"
GCS_ENDPOINT = f"http://127.0.0.1:{PORTS['gs']}"
AZURE_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented by Microsoft).
AZURE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURE_ENDPOINT = f"http://127.0.0.1:{PORTS['abs']}/{AZURE_ACCOUNT}"
AZURE_KEY_VAR = "LIFEBOAT_TEST_AZURE_KEY"  # the environment variable `env_for` puts the Azure key in
BUCKET = "lifeboat-test"

# A factory of fresh replicas: backend name -> the replica's config block.
NewReplica = Callable[[str], Awaitable[dict[str, Any]]]


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


def s3_client(endpoint: str = S3_ENDPOINT) -> Any:
    """A boto3 S3 client with the test credentials, on moto (or a proxy in front of it)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


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


def replica_block(
    backend: str, name: str, servers: SFTPServer, tmp_path: Path, *, azure_key: str = AZURE_KEY
) -> dict[str, Any]:
    """The `replica:` block of a config for replica `name` on `backend`, the way a user writes it.

    S3 credentials are left to the environment (see `env_for`); the Azure account key is `azure_key`,
    the key itself or a `${VAR}` reference. A file replica lives under `tmp_path`.
    """
    urls = {
        "file": f"file://{tmp_path / name}",
        "s3": f"s3://{BUCKET}/{name}",
        "gs": f"gs://{BUCKET}/{name}",
        "abs": f"abs://{AZURE_ACCOUNT}@{BUCKET}/{name}",
        "sftp": f"sftp://{servers.user}@127.0.0.1:{PORTS['sftp']}{servers.root}/{name}",
        "nats": f"nats://127.0.0.1:{PORTS['nats']}/{name}",
    }
    if backend not in urls:
        raise AssertionError(backend)
    block: dict[str, Any] = {"url": urls[backend]}
    if backend == "s3":
        block.update({"endpoint": S3_ENDPOINT, "region": "us-east-1", "force-path-style": True})
    elif backend == "abs":
        block.update({"endpoint": AZURE_ENDPOINT, "account-key": azure_key})
    elif backend == "sftp":
        block.update({"key-path": str(servers.client_key), "host-key": servers.host_key_line})
    return block


@asynccontextmanager
async def replica_factory(prefix: str, block: Callable[[str, str], dict[str, Any]]) -> AsyncIterator[NewReplica]:
    """A factory of fresh, empty replicas, for a fixture to yield.

    Each call names a new replica `prefix-<random>` on the backend it is given, creates its NATS
    object store when the backend is NATS (Litestream requires it to exist) and returns
    `block(backend, name)`. The NATS stores are removed on exit.
    """
    made: list[str] = []

    async def make(backend: str) -> dict[str, Any]:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        if backend == "nats":
            await nats_bucket(name, create=True)
            made.append(name)
        return block(backend, name)

    try:
        yield make
    finally:
        for name in made:
            await nats_bucket(name, create=False)


def env_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials the CLI processes read from their environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv(AZURE_KEY_VAR, AZURE_KEY)
    monkeypatch.setenv("LITESTREAM_AZURE_ACCOUNT_KEY", AZURE_KEY)


def write_yaml(path: Path, db: Path, block: dict[str, Any], **db_opts: Any) -> Path:
    """A litestream.yml with one database (values JSON-quoted: valid YAML for both tools)."""
    lines = ["dbs:", f"  - path: {json.dumps(str(db))}"]
    lines += [f"    {k}: {json.dumps(v)}" for k, v in db_opts.items()]
    lines.append("    replica:")
    lines += [f"      {k}: {json.dumps(v)}" for k, v in block.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def new_db_config(tmp_path: Path, block: dict[str, Any], config: str = "litestream.yml") -> tuple[Path, Path]:
    """A new application database `tmp_path/app.db` and the config `tmp_path/config` replicating it
    to `block`; returns both paths."""
    db = tmp_path / "app.db"
    create_db(db)
    return db, write_yaml(tmp_path / config, db, block)


def remote_client(block: dict[str, Any]) -> Any:
    """An in-process client on the replica (expanding the Azure key the config takes from the env)."""
    settings = dict(block)
    if str(settings.get("account-key", "")).startswith("${"):
        settings["account-key"] = AZURE_KEY
    return new_client(settings)


@asynccontextmanager
async def remote(block: dict[str, Any]) -> AsyncIterator[Any]:
    """`remote_client(block)`, closed on exit."""
    client = remote_client(block)
    try:
        yield client
    finally:
        await client.close()


async def remote_max_txid(client: Any) -> int:
    """The newest TXID among the replica's L0 files (0 when it has none)."""
    files = await client.ltx_files(0)
    return max((f.max_txid for f in files), default=0)


async def wait_remote_txid(client: Any, above: int, agent: Agent, timeout: float = 30) -> int:
    """Until the replica's newest L0 TXID exceeds `above` and stops moving; returns it."""
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        assert agent.alive(), f"replicate exited early ({agent.proc.returncode}):\n{agent.output()}"
        cur = await remote_max_txid(client)
        if cur > above and cur == last:
            return cur
        if time.monotonic() > deadline:
            raise AssertionError(f"replica {client!r} did not go above TXID {above} (at {cur}):\n{agent.output()}")
        last = cur
        await asyncio.sleep(0.3)
