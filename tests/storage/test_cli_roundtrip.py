"""Issue #4 acceptance through the CLI, on every backend: `lifeboat replicate -config X.yml` while a
writer process commits, SIGTERM (exit 0), then `lifeboat restore` equals the source, and
`restore -timestamp T` (T between two batches) gives exactly the first batch.

Replica options live in the config file the way a user writes them: S3 endpoint, region and
force-path-style with credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; the Azure key from
`${VAR}` expansion; the SFTP key-path and host-key; a NATS object store created beforehand (Litestream
requires that); GCS through STORAGE_EMULATOR_HOST. Point-in-time restores use the URL form with the
query options where the backend has them.

The replica blocks, config files and waiting are in `replica_helpers.py`; the `new_replica` fixture
(credentials in the environment, the Azure key as `${VAR}`) in conftest.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from helpers import (
    Agent,
    assert_same_db,
    batches,
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
from lifeboat.agent.storage import read_ltx_file
from replica_helpers import (
    AZURE_ENDPOINT,
    BACKENDS,
    S3_ENDPOINT,
    NewReplica,
    new_db_config,
    remote,
    wait_remote_txid,
)


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


@pytest.mark.parametrize("backend", BACKENDS)
async def test_replicate_sigterm_restore_and_pitr(backend: str, tmp_path: Path, new_replica: NewReplica) -> None:
    block = await new_replica(backend)
    db, cfg = new_db_config(tmp_path, block)
    async with remote(block) as client:
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
