"""``kubectl lifeboat status``: what a SQLiteReplica's status becomes in the table and in ``-o json``."""

from typing import Any

from lifeboat.operator.plugin import table


def replica(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "prod"},
            "spec": {"database": "/data/app.db", "replica": {"url": "s3://b/p"}}, "status": status}


def restore(name: str, replica_name: str, created: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created}, "spec": {"replica": replica_name},
            "status": status}


HEALTHY = replica(
    "db", txid="00000000000000a3", lagSeconds=0.42,
    conditions=[{"type": "Ready", "status": "True", "reason": "Replicating", "message": "1 pod(s)"}],
    pods=[{"name": "app-0", "txid": "00000000000000a3", "lagSeconds": 0.42, "error": None},
          {"name": "app-1", "txid": None, "lagSeconds": None, "error": "agent unreachable"}],
    lastVerification={"time": "2024-05-01T12:00:05Z", "requested": "2024-05-01T12:00:00Z", "result": "Succeeded",
                      "txid": "00000000000000a3", "target": "scratch", "duration": "3s", "message": "ok"})
RESTORES = [
    restore("db-old", "db", "2024-04-01T00:00:00Z", phase="Succeeded", completionTime="2024-04-01T00:01:00Z"),
    restore("db-new", "db", "2024-05-01T00:00:00Z", phase="Failed", completionTime="2024-05-01T00:02:00Z",
            message="restore Job failed: no backup"),
    restore("other", "other", "2024-06-01T00:00:00Z", phase="Succeeded"),
]


def test_summary_takes_the_newest_restore_of_this_replica_and_the_last_verification() -> None:
    row = table.summary(HEALTHY, RESTORES)
    assert row["lastRestore"] == {"name": "db-new", "phase": "Failed", "time": "2024-05-01T00:02:00Z",
                                  "txid": None, "message": "restore Job failed: no backup"}
    assert row["lastVerification"]["result"] == "Succeeded"
    assert (row["ready"], row["txid"], row["lagSeconds"], row["paused"]) == ("True", "00000000000000a3", 0.42, False)
    assert [p["name"] for p in row["pods"]] == ["app-0", "app-1"]


def test_the_table_has_kubectl_style_columns_and_dashes_for_what_is_unknown() -> None:
    fresh = replica("fresh", conditions=[{"type": "Ready", "status": "False", "reason": "NoPods"}])
    fresh["spec"]["paused"] = True
    text = table.render([table.summary(HEALTHY, RESTORES), table.summary(fresh, [])])
    header, first, second = text.splitlines()
    assert header.split("   ")[0] == "NAME"
    cells = [[c.strip() for c in line.split("   ") if c.strip()] for line in (header, first, second)]
    assert cells[0] == list(table.COLUMNS)
    assert cells[1] == ["db", "/data/app.db", "True", "no", "0.4s", "00000000000000a3", "1/2",
                        "Failed 2024-05-01T00:02:00Z", "Succeeded 2024-05-01T12:00:05Z"]
    assert cells[2] == ["fresh", "/data/app.db", "False (NoPods)", "yes", "-", "-", "0/0", "-", "-"]
    assert not any(line.endswith(" ") for line in text.splitlines())


def test_a_replica_the_operator_has_not_seen_yet_reads_unknown() -> None:
    (cells,) = [table._cells(table.summary({"metadata": {"name": "new"}, "spec": {}}, []))]
    assert cells[:3] == ["new", "-", "Unknown"]
