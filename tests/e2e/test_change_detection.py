"""How the agent learns of commits: inotify on the database's directory, with the stat poll every
`monitor-interval` only as a fallback. With the poll an hour away, every commit must still ship."""

from __future__ import annotations

from pathlib import Path

from helpers import Agent, create_db, l0_txids, wait_for, wait_replica_started, write_batch, write_config


def test_every_commit_ships_without_the_poll(tmp_path: Path) -> None:
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    create_db(db)
    conf = write_config(tmp_path / "lifeboat.yml", db, replica, **{"monitor-interval": "1h"})
    with Agent.lifeboat("-config", str(conf), log=tmp_path / "agent.log") as agent:
        wait_replica_started(agent, replica)
        for batch in range(1, 6):
            before = l0_txids(replica)[-1]
            write_batch(db, batch)
            wait_for(lambda before=before: l0_txids(replica)[-1] > before, timeout=20,
                     what=f"batch {batch} shipped with no poll")
        assert agent.stop() == 0, agent.output()
