"""Issue #4 acceptance through the CLI, on every backend: `lifeboat replicate -config X.yml` while a
writer process commits, SIGTERM (exit 0), then `lifeboat restore` equals the source, and
`restore -timestamp T` (T between two batches) gives exactly the first batch.

Replica options live in the config file the way a user writes them: S3 endpoint, region and
force-path-style with credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; the Azure key from
`${VAR}` expansion; the SFTP key-path and host-key; a NATS object store created beforehand (Litestream
requires that); GCS through STORAGE_EMULATOR_HOST. Point-in-time restores use the URL form with the
query options where the backend has them.

Other suites import `replica_block`, `write_yaml`, `remote_client`, `env_for` and `wait_remote_txid`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import AZURE_ACCOUNT, AZURE_ENDPOINT, AZURE_KEY, BUCKET, PORTS, S3_ENDPOINT, SFTPServer, nats_bucket
from helpers import (
    Agent,
    assert_same_db,
    batches,
    create_db,
    integrity,
    lifeboat,
    no_traceback,
    ok,
    rfc3339_ms,
    rows,
    start_writer,
    wait_writer,
    write_batch,
)
from lifeboat.agent.storage import new_client, read_ltx_file

BACKENDS = ["file", "s3", "gs", "abs", "sftp", "nats"]
AZURE_KEY_VAR = "LIFEBOAT_TEST_AZURE_KEY"


def replica_block(backend: str, name: str, servers: SFTPServer, tmp_path: Path) -> dict[str, Any]:
    """The `replica:` block of a config, credentials left to the environment (see `env_for`)."""
    if backend == "file":
        return {"url": f"file://{tmp_path / name}"}
    if backend == "s3":
        return {
            "url": f"s3://{BUCKET}/{name}",
            "endpoint": S3_ENDPOINT,
            "region": "us-east-1",
            "force-path-style": True,
        }
    if backend == "gs":
        return {"url": f"gs://{BUCKET}/{name}"}
    if backend == "abs":
        return {
            "url": f"abs://{AZURE_ACCOUNT}@{BUCKET}/{name}",
            "endpoint": AZURE_ENDPOINT,
            "account-key": f"${{{AZURE_KEY_VAR}}}",
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


def replica_url(backend: str, block: dict[str, Any]) -> str:
    """The same replica as one URL with Litestream's query options (for `restore URL`)."""
    url = str(block["url"])
    if backend == "s3":
        return f"{url}?endpoint={quote(S3_ENDPOINT, safe='')}&region=us-east-1&forcePathStyle=true"
    if backend == "abs":
        return f"{url}?endpoint={quote(AZURE_ENDPOINT, safe='')}"
    if backend == "sftp":
        return f"{url}?keyPath={quote(block['key-path'], safe='')}&hostKey={quote(block['host-key'], safe='')}"
    return url


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


def remote_client(block: dict[str, Any]) -> Any:
    """An in-process client on the replica (expanding the Azure key the config takes from the env)."""
    settings = dict(block)
    if str(settings.get("account-key", "")).startswith("${"):
        settings["account-key"] = AZURE_KEY
    return new_client(settings)


async def remote_max_txid(client: Any) -> int:
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


@pytest.fixture
async def new_replica(
    servers: SFTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[[str], Awaitable[dict[str, Any]]]]:
    """Factory: the config block of a fresh replica on a backend (NATS stores made and removed)."""
    env_for(monkeypatch)
    made: list[str] = []

    async def make(backend: str) -> dict[str, Any]:
        name = f"cli-{uuid.uuid4().hex[:12]}"
        if backend == "nats":
            await nats_bucket(name, create=True)
            made.append(name)
        return replica_block(backend, name, servers, tmp_path)

    yield make
    for name in made:
        await nats_bucket(name, create=False)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_replicate_sigterm_restore_and_pitr(
    backend: str, tmp_path: Path, new_replica: Callable[[str], Awaitable[dict[str, Any]]]
) -> None:
    block = await new_replica(backend)
    db = tmp_path / "app.db"
    create_db(db)
    cfg = write_yaml(tmp_path / "litestream.yml", db, block)
    client = remote_client(block)
    try:
        with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log") as agent:
            start = await wait_remote_txid(client, 0, agent)  # the initial snapshot is up
            write_batch(db, 1)
            await wait_remote_txid(client, start, agent)  # batch 1's L0 file is up
            t = datetime.now(UTC)
            await asyncio.sleep(0.3)
            if backend == "sftp":
                # SFTP (v3) sets whole-second mtimes, for Litestream too: start batch 2 in a later second.
                await asyncio.sleep(1.05 - datetime.now(UTC).microsecond / 1e6)
            writer = start_writer(db, 2, 30, rows=20, pause=0.02)  # batches 2..31
            wait_writer(writer)
            code = agent.stop()
            log = agent.output()
        assert code == 0, f"replicate exited {code} on SIGTERM:\n{log}"
        no_traceback(log)
        assert batches(db) == set(range(1, 32))

        # Timestamps are stored where Litestream keeps them (metadata / mtime / NATS header): the
        # listing that reads them agrees with each file's LTX header.
        files = await client.ltx_files(0, use_metadata=True)
        assert files, f"no L0 files in {client!r}"
        unit = 1000 if backend == "sftp" else 1  # milliseconds per stored tick
        for f in files[:3] + files[-3:]:
            head = await read_ltx_file(client, f)
            header_ms = int.from_bytes(head[32:40], "big")
            stored_ms = round(f.created_at.timestamp() * 1000)
            assert stored_ms == header_ms // unit * unit, (f.name, f.created_at, header_ms)
    finally:
        await client.close()

    out = tmp_path / "restored.db"
    proc = ok(lifeboat("restore", "-o", str(out), "-config", str(cfg), str(db)))
    no_traceback(proc.stderr)
    assert_same_db(out, db)

    pit = tmp_path / "pit.db"
    proc = ok(lifeboat("restore", "-o", str(pit), "-timestamp", rfc3339_ms(t), replica_url(backend, block)))
    no_traceback(proc.stderr)
    assert integrity(pit) == "ok"
    first = [r for r in rows(db) if r[1] == 1]
    assert rows(pit) == first, f"restore -timestamp {rfc3339_ms(t)} gave batches {batches(pit)}, want {{1}}"
