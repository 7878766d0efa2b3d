"""Two agents on one replica through the CLI (issue #4): while one `lifeboat replicate` holds the
replica's lease a second one is refused (exit 1, one line naming the holder); once the first stops
(releasing the lease) a new one starts and replicates.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import Agent, assert_same_db, create_db, lifeboat, no_traceback, ok, write_batch
from test_cli_roundtrip import new_replica, remote_client, wait_remote_txid, write_yaml  # noqa: F401 (fixture)


@pytest.mark.parametrize("backend", ["file", "s3"])
async def test_second_agent_refused_until_first_stops(
    backend: str, tmp_path: Path, new_replica: Callable[[str], Awaitable[dict[str, Any]]]  # noqa: F811
) -> None:
    block = await new_replica(backend)
    db = tmp_path / "app.db"
    create_db(db)
    cfg = write_yaml(tmp_path / "litestream.yml", db, block)
    client = remote_client(block)
    try:
        with Agent.lifeboat("-config", str(cfg), log=tmp_path / "first.log") as first:
            txid = await wait_remote_txid(client, 0, first)
            second = lifeboat("replicate", "-config", str(cfg), timeout=60)
            assert second.returncode == 1, f"second agent not refused ({second.returncode}):\n{second.stderr}"
            no_traceback(second.stderr)
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1, f"expected one line, got:\n{second.stderr}"
            holder = f"{socket.gethostname()}:{first.proc.pid}"
            assert holder in lines[0] and "locked" in lines[0], lines[0]
            assert first.alive(), f"the first agent died:\n{first.output()}"
            write_batch(db, 1)
            txid = await wait_remote_txid(client, txid, first)
            code = first.stop()
            assert code == 0, first.output()

        write_batch(db, 2)
        with Agent.lifeboat("-config", str(cfg), log=tmp_path / "third.log") as third:
            await wait_remote_txid(client, txid, third)
            write_batch(db, 3)
            await wait_remote_txid(client, txid + 1, third)
            code = third.stop()
            assert code == 0, third.output()
            no_traceback(third.output())
    finally:
        await client.close()

    out = tmp_path / "restored.db"
    ok(lifeboat("restore", "-o", str(out), "-config", str(cfg), str(db)))
    assert_same_db(out, db)
