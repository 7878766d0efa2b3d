"""The agent's HTTP port and logs, as a scraper and a log shipper see them: `lifeboat replicate -config`
with `addr`, an application writing, `/metrics`, `/healthz`, `/readyz`, `/status`, JSON logs."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

from helpers import Agent, create_db, start_writer, wait_for, wait_replica_started, wait_writer, write_batch

# LITESTREAM.md §A.4: every metric Litestream 0.5 serves, with its label names.
LITESTREAM_METRICS = {
    "litestream_db_size": {"db"},
    "litestream_wal_size": {"db"},
    "litestream_total_wal_bytes": {"db"},
    "litestream_txid": {"db"},
    "litestream_sync_count": {"db"},
    "litestream_sync_error_count": {"db"},
    "litestream_sync_seconds": {"db"},
    "litestream_disk_full": {"db"},
    "litestream_checkpoint_count": {"db", "mode"},
    "litestream_checkpoint_error_count": {"db", "mode"},
    "litestream_checkpoint_seconds": {"db", "mode"},
    "litestream_compaction_verify_error_count": {"db"},
    "litestream_replica_operation_total": {"replica_type", "operation"},
    "litestream_replica_operation_bytes": {"replica_type", "operation"},
    "litestream_replica_operation_duration_seconds": {"replica_type", "operation"},
    "litestream_replica_operation_errors_total": {"replica_type", "operation", "code"},
    "litestream_l0_retention_files_total": {"db", "status"},
}
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def scrape(port: int) -> tuple[dict[str, set[str]], list[tuple[str, dict[str, str], float]]]:
    """(metric family -> TYPE, samples as (name, labels, value)) from `/metrics`."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    types: dict[str, set[str]] = {}
    samples = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types.setdefault(name, set()).add(kind)
        elif line and not line.startswith("#"):
            m = SAMPLE.match(line)
            assert m, line
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            samples.append((m.group(1), labels, float(m.group(3))))
    return types, samples


def value(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def family_of(sample_name: str, family: str) -> bool:
    return sample_name == family or (
        sample_name.startswith(family) and sample_name[len(family):] in ("_bucket", "_count", "_sum", "_created")
    )


def test_metrics_health_status_and_json_logs(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    replica = tmp_path / "replica"
    create_db(db)
    port = free_port()
    cfg = tmp_path / "lifeboat.yml"
    cfg.write_text(
        f"addr: 127.0.0.1:{port}\n"
        "logging:\n  type: json\n  level: debug\n"
        f"dbs:\n  - path: {db}\n    replica:\n      url: file://{replica}\n"
    )
    with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log") as agent:
        wait_replica_started(agent, replica)
        assert get(port, "/healthz")[0] == 200
        wait_for(lambda: get(port, "/readyz")[0] == 200, what="/readyz 200 after the first upload")

        _, before = scrape(port)
        lag_before = value(before, "lifeboat_replication_lag_seconds_count", db=str(db))
        wait_writer(start_writer(db, 1, 20, pause=0.02))
        write_batch(db, 21)

        def lag_grew() -> list[tuple[str, dict[str, str], float]] | None:
            _, s = scrape(port)
            return s if value(s, "lifeboat_replication_lag_seconds_count", db=str(db)) >= lag_before + 2 else None

        samples = wait_for(lag_grew, what="lag histogram count to grow with writes")
        types, samples = scrape(port)

        # Every Litestream metric, with exactly Litestream's label names.
        for family, want in LITESTREAM_METRICS.items():
            base = family.removesuffix("_total") if family.endswith("_operation_total") or family.endswith(
                "_errors_total"
            ) else family
            assert base in types or family in types, f"{family} missing from /metrics"
            series = [lab for n, lab, _ in samples if family_of(n, family) or family_of(n, base)]
            if family != "litestream_replica_operation_errors_total":  # no failure happened: no series
                assert series, f"{family} has no series"
            for lab in series:
                assert set(lab) - {"le"} == want, f"{family}: labels {sorted(lab)}, want {sorted(want)}"
        assert "lifeboat_replica_txid" in types
        assert types.get("lifeboat_replication_lag_seconds") == {"histogram"}

        # The values move with the writes.
        assert value(samples, "litestream_sync_count", db=str(db)) >= 2
        assert value(samples, "litestream_total_wal_bytes", db=str(db)) > 0
        assert value(samples, "litestream_db_size", db=str(db)) > 0
        assert value(samples, "litestream_txid", db=str(db)) >= 2
        assert value(samples, "litestream_replica_operation_total", replica_type="file", operation="PUT") >= 2
        assert value(samples, "litestream_replica_operation_bytes", replica_type="file", operation="PUT") > 0
        assert value(samples, "litestream_replica_operation_total", replica_type="file", operation="LIST") >= 1
        assert value(
            samples, "litestream_replica_operation_duration_seconds_count", replica_type="file", operation="PUT"
        ) >= 2
        assert value(samples, "lifeboat_replica_txid", db=str(db)) >= 2
        # The start-up snapshot (L9) is visible to the "no recent snapshot" alert.
        wait_for(
            lambda: value(scrape(port)[1], "lifeboat_last_snapshot_timestamp_seconds", db=str(db)) > 0,
            what="lifeboat_last_snapshot_timestamp_seconds after the start-up snapshot",
        )

        # /status: one entry per database, caught up once the writes are shipped.
        def caught_up() -> dict[str, object] | None:
            status, body = get(port, "/status")
            assert status == 200, body
            (entry,) = json.loads(body)["databases"]
            return entry if entry["remote_txid"] == entry["txid"] else None

        entry = wait_for(caught_up, what="/status remote_txid == txid")
        assert {"path", "txid", "remote_txid", "last_sync", "lag_seconds", "error", "replica"} <= set(entry)
        assert entry["path"] == str(db)
        assert entry["txid"] >= 2
        assert entry["error"] is None
        assert entry["lag_seconds"] == 0.0
        assert entry["last_sync"] is not None and entry["last_sync"].endswith("Z")
        assert get(port, "/readyz")[0] == 200
        assert get(port, "/nope")[0] == 404

        assert agent.stop() == 0, agent.output()

    # JSON logs: every line parses; the debug events name their database.
    lines = [ln for ln in agent.output().splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]
    assert all({"time", "level", "msg"} <= set(r) for r in records)
    syncs = [r for r in records if r.get("event") == "sync"]
    assert syncs and all(r["db"] == str(db) and r["level"] == "DEBUG" for r in syncs)


def test_readyz_is_503_while_nothing_is_replicated(tmp_path: Path) -> None:
    """A replica that cannot be written: the agent stays alive (healthz), but not ready."""
    db = tmp_path / "app.db"
    create_db(db)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the replica directory should be")
    port = free_port()
    cfg = tmp_path / "lifeboat.yml"
    cfg.write_text(
        f"addr: 127.0.0.1:{port}\nlogging:\n  type: json\n"
        f"dbs:\n  - path: {db}\n    replica:\n      url: file://{blocker}/replica\n"
    )
    with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log") as agent:
        wait_for(lambda: get(port, "/healthz")[0] == 200 or not agent.alive(), what="agent up or exited")
        if not agent.alive():  # refusing to start on an unusable replica is fine too: one clear line
            assert agent.proc.returncode != 0
            assert str(blocker) in agent.output()
            return
        status, body = get(port, "/readyz")
        if status == 0:  # it answered /healthz, then refused the replica and exited before this request
            agent.proc.wait(timeout=60)
            assert agent.proc.returncode != 0
            assert str(blocker) in agent.output()
            return
        assert status == 503, body
        agent.stop()


def test_status_claims_no_position_before_the_database_is_open(tmp_path: Path) -> None:
    """Until the agent has opened its database and learned the replica's position, `/status` must not
    report positions: a `txid`/`remote_txid` of 0 read as "caught up at 0" lets a client pair what the
    app committed with a TXID the replica passed long ago, and acknowledge rows that are not there."""
    db = tmp_path / "app.db"  # not created yet: the agent waits for the application
    port = free_port()
    cfg = tmp_path / "lifeboat.yml"
    cfg.write_text(f"addr: 127.0.0.1:{port}\ndbs:\n  - path: {db}\n    replica:\n      url: file://{tmp_path}/r\n")
    with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log") as agent:
        wait_for(lambda: get(port, "/healthz")[0] == 200, what="agent serving")
        status, body = get(port, "/status")
        assert status == 200, body
        (entry,) = json.loads(body)["databases"]
        assert entry["state"] == "starting"
        assert entry["txid"] is None and entry["remote_txid"] is None, entry
        assert get(port, "/readyz")[0] == 503
        create_db(db)
        entry = wait_for(
            lambda: next((e for e in json.loads(get(port, "/status")[1])["databases"] if e["remote_txid"]), None),
            what="first upload",
        )
        assert entry["state"] == "replicating" and entry["txid"] >= 1
        assert agent.stop() == 0
