"""Point-in-time restore: `-txid N` and `-timestamp T` give exactly the rows committed up to there.

The writer keeps a log: after each batch it waits until the replica holds the L0 file for it, then
records (txid, time) and pauses, so every recorded point lies strictly between two batches' files.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from helpers import (
    Agent,
    batches,
    create_db,
    file_url,
    integrity,
    l0_txids,
    lifeboat,
    litestream,
    max_txid,
    no_traceback,
    ok,
    rfc3339_ms,
    wait_for,
    wait_replica_started,
    write_batch,
)

BATCHES = 6


def _stable_max(replica: Path, above: int) -> int:
    """The replica's newest L0 TXID once it is above `above` and has stopped moving."""
    wait_for(lambda: l0_txids(replica) and l0_txids(replica)[-1] > above, what=f"an L0 file above {above}")
    last = l0_txids(replica)[-1]
    while True:
        time.sleep(0.15)
        cur = l0_txids(replica)[-1]
        if cur == last:
            return cur
        last = cur


def test_point_in_time(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    replica = tmp_path / "replica"
    url = file_url(replica)
    create_db(db)
    log: list[tuple[int, int, datetime]] = []  # (batch, txid, time)
    with Agent.lifeboat(str(db), url, log=tmp_path / "agent.log") as agent:
        wait_replica_started(agent, replica)
        txid = _stable_max(replica, 0)
        for k in range(1, BATCHES + 1):
            write_batch(db, k)
            txid = _stable_max(replica, txid)
            assert max_txid(url) == txid  # the CLI listing agrees with the directory
            log.append((k, txid, datetime.now(UTC)))
            time.sleep(0.05)
        assert agent.stop() == 0

    for k, txid, when in log:
        want = set(range(1, k + 1))
        out = tmp_path / f"txid-{k}.db"
        proc = ok(lifeboat("restore", "-txid", f"{txid:016x}", "-o", str(out), url))
        no_traceback(proc.stderr)
        assert integrity(out) == "ok"
        assert batches(out) == want, f"-txid {txid:x} after batch {k}"

        out = tmp_path / f"ts-{k}.db"
        ok(lifeboat("restore", "-timestamp", rfc3339_ms(when), "-o", str(out), url))
        assert integrity(out) == "ok"
        assert batches(out) == want, f"-timestamp {rfc3339_ms(when)} after batch {k}"

    # The real binary picks the same points. (It rejects a timestamp after the newest file's
    # creation time with "timestamp does not exist", so the last point is checked by TXID only.)
    for i, (k, txid, when) in enumerate((log[0], log[len(log) // 2], log[-1])):
        want = set(range(1, k + 1))
        out = tmp_path / f"ls-txid-{k}.db"
        ok(litestream("restore", "-txid", f"{txid:016x}", "-o", str(out), url))
        assert batches(out) == want
        if i < 2:
            out = tmp_path / f"ls-ts-{k}.db"
            ok(litestream("restore", "-timestamp", rfc3339_ms(when), "-o", str(out), url))
            assert batches(out) == want

    # A TXID beyond the replica is not available: one line, exit 1, nothing written.
    out = tmp_path / "beyond.db"
    proc = lifeboat("restore", "-txid", f"{log[-1][1] + 100:016x}", "-o", str(out), url)
    assert proc.returncode == 1
    assert "no matching backup" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
