"""Two agents on one replica through the CLI (issue #4): while one `lifeboat replicate` holds the
replica's lease a second one is refused (exit 1, one line naming the holder); once the first stops
(releasing the lease) a new one starts and replicates.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from helpers import Agent, assert_same_db, lifeboat, no_traceback, ok, write_batch
from replica_helpers import NewReplica, new_db_config, remote, wait_remote_txid


@pytest.mark.parametrize("backend", ["file", "s3"])
async def test_second_agent_refused_until_first_stops(backend: str, tmp_path: Path, new_replica: NewReplica) -> None:
    block = await new_replica(backend)
    db, cfg = new_db_config(tmp_path, block)
    async with remote(block) as client:
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

    out = tmp_path / "restored.db"
    ok(lifeboat("restore", "-o", str(out), "-config", str(cfg), str(db)))
    assert_same_db(out, db)
