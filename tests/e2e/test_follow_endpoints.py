"""Follow mode's HTTP port, as a Service's readiness probe and a scraper see it: `lifeboat restore -f
-config` with `addr`, a writer's `lifeboat replicate` on a directory replica, `/readyz` and `/metrics`.

Also the read-replica pod's start-up as the operator injects it: `restore -follow-ready` (the init
container), then `restore -f` (the sidecar) resuming from what it restored.
"""

from __future__ import annotations

from pathlib import Path

from helpers import (
    LIFEBOAT,
    Agent,
    batches,
    create_db,
    file_url,
    lifeboat,
    no_traceback,
    start_writer,
    wait_for,
    wait_replica_started,
    wait_writer,
)
from test_observability import free_port, get, scrape, value


def follower_config(tmp_path: Path, out: Path, replica: Path, port: int) -> Path:
    """The follower pod's config: the writer's replica, the follower's own database path, `addr`."""
    cfg = tmp_path / "follower.yml"
    cfg.write_text(f"addr: 127.0.0.1:{port}\ndbs:\n  - path: {out}\n    replica:\n      url: {file_url(replica)}\n")
    return cfg


def follow(cfg: Path, out: Path, log: Path) -> Agent:
    """The injected sidecar's command: `restore -f -follow-interval ... -config CFG DB`."""
    return Agent([*LIFEBOAT, "restore", "-f", "-follow-interval", "100ms", "-config", str(cfg), str(out)], log)


def follow_samples(port: int, out: Path) -> dict[str, float]:
    _, samples = scrape(port)
    names = ("lifeboat_follow_ready", "lifeboat_follow_txid", "lifeboat_follow_lag_seconds")
    return {name: value(samples, name, db=str(out)) for name in names}


def test_readyz_waits_for_the_first_restore_and_metrics_move_with_commits(tmp_path: Path) -> None:
    db, replica, out = tmp_path / "app.db", tmp_path / "replica", tmp_path / "follower.db"
    port = free_port()
    cfg = follower_config(tmp_path, out, replica, port)
    # The follower starts first: the replica holds nothing yet, so there is nothing to restore.
    with follow(cfg, out, tmp_path / "follow.log") as follower:
        wait_for(lambda: get(port, "/healthz")[0] == 200, 60, what="the follower's HTTP port")
        status, body = get(port, "/readyz")
        assert status == 503 and str(out) in body, (status, body)
        assert follow_samples(port, out)["lifeboat_follow_ready"] == 0
        assert follower.alive(), follower.output()

        create_db(db)
        with Agent.lifeboat(str(db), file_url(replica), log=tmp_path / "replicate.log") as writer:
            wait_replica_started(writer, replica)
            wait_for(lambda: get(port, "/readyz")[0] == 200, 60, what="/readyz 200 after the first restore")
            first = follow_samples(port, out)
            assert first["lifeboat_follow_ready"] == 1
            assert first["lifeboat_follow_txid"] >= 1

            commits = start_writer(db, 1, 30, pause=0.05)
            seen: list[dict[str, float]] = []

            def caught_up() -> bool:
                seen.append(follow_samples(port, out))
                return batches(out) == set(range(1, 31))

            wait_for(caught_up, 120, interval=0.05, what="the follower to hold batches 1..30")
            wait_writer(commits)
            assert writer.stop() == 0
        assert follower.stop() == 0
    no_traceback(follower.output())
    txids = [s["lifeboat_follow_txid"] for s in seen]
    assert txids == sorted(txids) and txids[-1] > first["lifeboat_follow_txid"], txids
    lags = {s["lifeboat_follow_lag_seconds"] for s in seen}
    assert any(lag > 0 for lag in lags), f"the lag never moved: {sorted(lags)}"
    assert batches(out) == set(range(1, 31))


def test_follow_ready_restore_then_follow_resumes_it(tmp_path: Path) -> None:
    db, replica, out = tmp_path / "app.db", tmp_path / "replica", tmp_path / "follower.db"
    port = free_port()
    cfg = follower_config(tmp_path, out, replica, port)
    init = ("restore", "-if-db-not-exists", "-if-replica-exists", "-follow-ready", "-config", str(cfg), str(out))
    # No backup yet: the init container skips and the sidecar waits.
    proc = lifeboat(*init)
    assert proc.returncode == 0 and "no backup found" in proc.stderr, proc.stderr
    assert not out.exists()

    create_db(db)
    with Agent.lifeboat(str(db), file_url(replica), log=tmp_path / "replicate.log") as writer:
        wait_replica_started(writer, replica)
        wait_writer(start_writer(db, 1, 5))
        proc = lifeboat(*init)
        assert proc.returncode == 0 and "ready to follow" in proc.stderr, proc.stderr
        assert Path(f"{out}-txid").exists(), "-follow-ready left no -txid file for follow mode"
        with follow(cfg, out, tmp_path / "follow.log") as follower:
            wait_for(lambda: get(port, "/readyz")[0] == 200, 60, what="/readyz 200 after resuming")
            wait_writer(start_writer(db, 6, 5))
            wait_for(lambda: batches(out) == set(range(1, 11)), 60, interval=0.1, what="batches 6..10 followed")
            assert follower.stop() == 0
        assert writer.stop() == 0
    assert "resuming follow mode" in follower.output(), follower.output()


def test_follow_ready_refuses_a_point_in_time(tmp_path: Path) -> None:
    proc = lifeboat("restore", "-follow-ready", "-txid", "0000000000000002", "-o", str(tmp_path / "x.db"),
                    file_url(tmp_path / "replica"))
    assert proc.returncode == 1 and "-follow-ready" in proc.stderr and "-txid" in proc.stderr, proc.stderr
    no_traceback(proc.stderr)


def test_an_unusable_addr_is_one_line_naming_it(tmp_path: Path) -> None:
    replica, out = tmp_path / "replica", tmp_path / "follower.db"
    for addr in ("nonsense", "256.1.1.1:9090"):
        cfg = tmp_path / "follower.yml"
        cfg.write_text(f"addr: {addr}\ndbs:\n  - path: {out}\n    replica:\n      url: {file_url(replica)}\n")
        proc = lifeboat("restore", "-f", "-config", str(cfg), str(out))
        assert proc.returncode == 1, proc.stderr
        assert f"config addr {addr!r}" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        no_traceback(proc.stderr)
