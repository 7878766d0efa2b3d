"""One agent carrying 200 databases of a `dir:` entry under a soft open-file limit of 256 (a
container's 1,024 scaled down): every database replicates, and none fails for want of descriptors."""

from __future__ import annotations

import random
import resource
import uuid
from pathlib import Path

import pytest
from helpers import LIFEBOAT, Agent, create_db, file_url, l0_txids, litestream, ok, rows, wait_for, write_batch

DATABASES = 200
SOFT_LIMIT = 256
SAMPLE = 10


def test_two_hundred_databases_under_a_low_soft_fd_limit(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 20 * DATABASES:
        pytest.skip(f"the hard open file limit ({hard}) leaves no room above the soft one")
    data, replica = tmp_path / "data", tmp_path / "replica"
    rels = [f"t{i % 4}/db{i:04d}.db" for i in range(DATABASES)]
    for i, rel in enumerate(rels):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        create_db(data / rel)
        write_batch(data / rel, i, rows=2)
    cfg = tmp_path / "litestream.yml"
    cfg.write_text(
        f"dbs:\n  - dir: {data}\n    pattern: '*.db'\n    recursive: true\n    watch: true\n"
        f"    replica:\n      url: {file_url(replica)}\n"
    )
    # The shell lowers the soft limit only, as a container runtime does, then becomes the agent.
    cmd = ["sh", "-c", f'ulimit -Sn {SOFT_LIMIT} && exec "$@"', "sh", *LIFEBOAT, "replicate", "-config", str(cfg)]
    sample = random.Random(7).sample(range(DATABASES), SAMPLE)
    with Agent(cmd, tmp_path / "agent.log") as agent:

        def replicated() -> bool:
            assert agent.alive(), agent.output()
            return all(l0_txids(replica / rel) for rel in rels)

        wait_for(replicated, 600, interval=1, what=f"first replication of {DATABASES} databases")
        before = {i: max(l0_txids(replica / rels[i])) for i in sample}
        for i in sample:
            write_batch(data / rels[i], 1000 + i, rows=2)
        wait_for(lambda: all(max(l0_txids(replica / rels[i])) > before[i] for i in sample), 300, interval=0.5,
                 what="the sample's writes")
        assert agent.stop() == 0, agent.output()
    log = agent.output()
    assert "Too many open files" not in log and "out of file descriptors" not in log, log[-3000:]
    for i in sample[:3]:
        out = tmp_path / f"restored-{uuid.uuid4().hex[:8]}.db"
        ok(litestream("restore", "-o", str(out), file_url(replica / rels[i])))
        assert rows(out) == rows(data / rels[i])
