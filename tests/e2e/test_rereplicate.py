"""A database restored by `lifeboat restore` is replicated again to the same replica, and the chain
stays restorable by both tools (the init-container flow: fresh volume, restore, then the sidecar)."""

from __future__ import annotations

from pathlib import Path

from helpers import (
    Agent,
    assert_same_db,
    batches,
    create_db,
    file_url,
    l0_txids,
    lifeboat,
    litestream,
    ok,
    start_writer,
    wait_for,
    wait_replica_started,
    wait_writer,
    write_config,
)


def test_restore_then_replicate_again(tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    url = file_url(replica)
    first = tmp_path / "pod1" / "app.db"
    first.parent.mkdir()
    create_db(first)
    cfg1 = write_config(tmp_path / "one.yml", first, replica, **{"min-checkpoint-page-count": 50})
    with Agent.lifeboat("-config", str(cfg1), log=tmp_path / "agent1.log") as agent:
        wait_replica_started(agent, replica)
        wait_writer(start_writer(first, 1, 20))
        assert agent.stop() == 0, agent.output()
    old_max = l0_txids(replica)[-1]

    # "Pod 2": a fresh volume, the restore init container, then the agent on the same replica.
    second = tmp_path / "pod2" / "app.db"
    second.parent.mkdir()
    ok(lifeboat("restore", "-if-db-not-exists", "-if-replica-exists", "-o", str(second), url))
    assert_same_db(second, first)
    cfg2 = write_config(tmp_path / "two.yml", second, replica, **{"min-checkpoint-page-count": 50})
    with Agent.lifeboat("-config", str(cfg2), log=tmp_path / "agent2.log") as agent:
        wait_for(lambda: l0_txids(replica)[-1] > old_max, what="the second agent's first L0 file")
        wait_writer(start_writer(second, 21, 20))
        assert agent.stop() == 0, agent.output()
    txids = l0_txids(replica)
    assert txids == list(range(1, txids[-1] + 1)), "L0 chain has a gap"
    assert batches(second) == set(range(1, 41))

    for tool in ("lifeboat", "litestream"):
        out = tmp_path / f"{tool}.db"
        run = lifeboat if tool == "lifeboat" else litestream
        ok(run("restore", "-o", str(out), url))
        assert_same_db(out, second)

    # And a restore as of the first agent's last TXID still gives the first history only.
    out = tmp_path / "old.db"
    ok(lifeboat("restore", "-txid", f"{old_max:016x}", "-o", str(out), url))
    assert batches(out) == set(range(1, 21))
