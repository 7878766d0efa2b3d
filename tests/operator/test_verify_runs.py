"""Verification restores, the pure parts: when one is due, the random point in the window, the Job,
and how its outcome is judged against the replica's TXID."""

import datetime
import json
import random

import pytest
from lifeboat.operator import restores, verify

UTC = datetime.UTC
NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def test_random_points_stay_within_retention_and_after_the_replica_was_created() -> None:
    rng = random.Random(7)
    created = NOW - datetime.timedelta(days=30)
    points = [verify.random_point(NOW, 3600, created, rng) for _ in range(500)]
    assert all(NOW - datetime.timedelta(hours=1) <= p <= NOW for p in points)
    assert all(p.microsecond == 0 for p in points)
    assert len(set(points)) > 100  # drawn, not fixed
    young = NOW - datetime.timedelta(minutes=5)
    assert all(young <= verify.random_point(NOW, 86400, young, rng) <= NOW for _ in range(100))


def test_retention_comes_from_the_snapshot_settings_else_the_agents_default() -> None:
    assert verify.retention_seconds({"snapshot": {"retention": "2h"}}) == 7200
    assert verify.retention_seconds({}) == 86400


def test_a_schedule_first_seen_starts_counting_then_runs_at_its_next_run() -> None:
    spec = {"verify": {"schedule": "0 * * * *"}}
    start, fields = verify.due(spec, {}, None, NOW)
    assert start is None and fields == {"lastScheduleTime": "2026-03-01T12:00:00Z", "since": "2026-03-01T12:00:00Z"}
    status = {"verification": fields}
    assert verify.due(spec, status, None, NOW + datetime.timedelta(minutes=59)) == (None, {})
    start, fields = verify.due(spec, status, None, NOW + datetime.timedelta(minutes=61))
    assert start == verify.Start(None, None) and fields == {"lastScheduleTime": "2026-03-01T13:01:00Z"}


def test_a_request_runs_once_until_the_status_echoes_it() -> None:
    spec = {"verify": {"schedule": "0 0 1 1 *"}}
    status = {"verification": {"lastScheduleTime": "2026-03-01T11:00:00Z"}}
    start, _ = verify.due(spec, status, "2026-03-01T12:00:00Z", NOW)
    assert start == verify.Start(None, "2026-03-01T12:00:00Z")
    done = {**status, "lastVerification": {"requested": "2026-03-01T12:00:00Z"}}
    assert verify.due(spec, done, "2026-03-01T12:00:00Z", NOW) == (None, {})
    # Without spec.verify too: the annotation alone asks for one.
    assert verify.due({}, {}, "x", NOW)[0] == verify.Start(None, "x")


def job(condition: str) -> dict:
    return {"spec": {"backoffLimit": 0}, "status": {"conditions": [{"type": condition, "status": "True"}]}}


def result(txid: str, check: str = "ok") -> str:
    return json.dumps({"db_path": "/x", "txid": txid, "duration_ms": 5, "integrity_check": check})


@pytest.mark.parametrize(("active", "message", "expected"), [
    ({"target": "latest", "writerTxid": "0000000000000010"}, result("0000000000000010"), "Succeeded"),
    ({"target": "latest", "writerTxid": "0000000000000010"}, result("0000000000000011"), "Succeeded"),
    ({"target": "latest", "writerTxid": "0000000000000010"}, result("000000000000000f"), "Failed"),
    ({"target": "latest", "writerTxid": None}, result("0000000000000003"), "Succeeded"),
    ({"target": "2026-03-01T11:00:00Z", "writerTxid": "0000000000000010"}, result("0000000000000004"), "Succeeded"),
    ({"target": "2026-03-01T11:00:00Z", "writerTxid": "0000000000000010"}, result("0000000000000011"), "Failed"),
    ({"target": "latest"}, result("0000000000000003", "*** in database main ***"), "Failed"),
    ({"target": "latest"}, "no json here", "Failed"),
])
def test_a_completed_job_is_judged_by_its_result_line(active: dict, message: str, expected: str) -> None:
    verdict = verify.judge(active, job("Complete"), message)
    assert verdict is not None and verdict[0] == expected, verdict


def test_a_failed_job_carries_the_restores_error_line() -> None:
    message = "lifeboat restore: level 0 file 0000000000000001-0000000000000001.ltx: checksum mismatch\n"
    assert verify.judge({}, job("Failed"), message) == (
        "Failed", "restore failed: lifeboat restore: level 0 file 0000000000000001-0000000000000001.ltx: "
        "checksum mismatch", None)
    assert verify.judge({}, {"status": {}}, None) is None  # still running
    assert verify.judge({"job": "j"}, None, None)[0] == "Failed"  # gone


def test_the_record_sets_every_key_so_a_merge_patch_drops_the_previous_ones() -> None:
    active = {"job": "j", "startTime": "2026-03-01T11:59:18Z", "target": "latest", "requested": None}
    done = verify.record(active, ("Succeeded", "ok", "0000000000000003"), NOW)
    assert done == {"time": "2026-03-01T12:00:00Z", "txid": "0000000000000003", "target": "latest",
                    "duration": "42s", "result": "Succeeded", "message": "ok", "requested": None}


def test_the_job_restores_into_scratch_with_the_workloads_identity_and_placement() -> None:
    replica = {"metadata": {"name": "db"}, "spec": {
        "database": "/data/app.db", "replica": {"url": "s3://b/p", "credentials": {"secretName": "s3"}}}}
    workload = {"metadata": {"name": "app"}, "spec": {"template": {"spec": {
        "serviceAccountName": "app-identity", "nodeSelector": {"zone": "a"},
        "securityContext": {"runAsUser": 1000, "fsGroup": 1000},
        "containers": [{"name": "app", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}}}}
    where = verify.placement([("Deployment", workload)], replica["spec"])
    args = verify.restore_args({"integrityCheck": "quick"}, "/data/app.db", "2026-03-01T11:00:00Z")
    body = restores.restore_job("db-verify-1", "apps", {"lifeboat.dev/verify": "db"}, args, replica, where,
                                "lifeboat:test", deadline=3600, retries=0)
    pod = body["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "app-identity" and pod["nodeSelector"] == {"zone": "a"}
    assert pod["securityContext"] == {"runAsUser": 1000, "fsGroup": 1000}
    assert {"name": restores.DATA_VOLUME, "emptyDir": {}} in pod["volumes"]
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])  # never the app's volume
    (container,) = pod["containers"]
    assert container["args"] == ["restore", "-json", "-integrity-check", "quick", "-timestamp",
                                 "2026-03-01T11:00:00Z", "-o", f"{verify.SCRATCH}/app.db",
                                 "-config", "/etc/lifeboat/lifeboat.yml", "/data/app.db"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["envFrom"] == [{"secretRef": {"name": "s3"}}]
    assert body["spec"]["backoffLimit"] == 0 and body["spec"]["activeDeadlineSeconds"] == 3600
    # No workload found: the Job still runs, with the defaults.
    assert verify.placement([], replica["spec"])["pod"] == {}
