"""Issue #4: a write workload replicates completely through `lifeboat replicate` while the S3
endpoint fails every third request (alternately a 503 SlowDown and a connection reset; the
`faulty_s3` fixture, `faults.FlakyProxy` in front of moto). The final restore reads moto directly,
not the proxy.

The workload runs for the issue's 2 minutes; LIFEBOAT_FAULT_WORKLOAD_SECONDS shortens it for local runs.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from faults import FlakyProxy
from helpers import Agent, assert_same_db, lifeboat, no_traceback, ok, start_writer, wait_writer
from replica_helpers import S3_ENDPOINT, NewReplica, new_db_config, remote, wait_remote_txid, write_yaml

WORKLOAD_SECONDS = float(os.environ.get("LIFEBOAT_FAULT_WORKLOAD_SECONDS", "120"))
BATCH_PAUSE = 0.05  # seconds between the writer's transactions (20 rows each)


async def test_workload_replicates_through_failing_s3(
    tmp_path: Path,
    faulty_s3: FlakyProxy,
    new_replica: NewReplica,
) -> None:
    direct = await new_replica("s3")
    proxied = {**direct, "endpoint": faulty_s3.endpoint}
    db, cfg = new_db_config(tmp_path, proxied, "faulty.yml")
    batches = int(WORKLOAD_SECONDS / (BATCH_PAUSE + 0.01))
    async with remote(direct) as client:
        with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log") as agent:
            await wait_remote_txid(client, 0, agent, timeout=60)
            started = time.monotonic()
            writer = start_writer(db, 1, batches, rows=20, pause=BATCH_PAUSE)
            while writer.poll() is None:
                assert agent.alive(), f"replicate died under faults:\n{agent.output()}"
                if time.monotonic() - started > WORKLOAD_SECONDS:
                    writer.terminate()  # a slow machine: stop at the planned duration
                await asyncio.sleep(0.5)
            if writer.returncode != -15:
                wait_writer(writer)
            elapsed = time.monotonic() - started
            code = agent.stop(timeout=90)
            log = agent.output()
    assert code == 0, f"replicate exited {code}:\n{log[-4000:]}"
    no_traceback(log)
    assert elapsed > WORKLOAD_SECONDS * 0.6, f"workload ran {elapsed:.1f}s only"
    assert faulty_s3.faults >= 20, f"only {faulty_s3.faults} of {faulty_s3.requests} requests failed"

    cfg_direct = write_yaml(tmp_path / "direct.yml", db, direct)
    assert S3_ENDPOINT in cfg_direct.read_text()
    out = tmp_path / "restored.db"
    ok(lifeboat("restore", "-o", str(out), "-config", str(cfg_direct), str(db), timeout=120))
    assert_same_db(out, db)
