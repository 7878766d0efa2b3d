"""Issue #9 day-2 operations, as processes against a real S3 (moto on 127.0.0.1:18001):

* the restore Job the operator generates for a SQLiteRestore: its container's command and args, run
  here as a process (the container's paths mapped to this machine's: the ConfigMap file, the
  termination-message file), restore the state at the requested timestamp, checked against a log of
  commit times, and the operator's parsing of the termination message gives TXID and integrity;
* `spec.paused`: a running `lifeboat replicate -config FILE` (the config rendered by the operator's
  agent_config) stops and resumes uploads when the file changes to the paused rendering and back,
  without a restart, as /status shows.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import Agent, batches, create_db, integrity, wait_for, write_batch
from lifeboat.operator import agent_config, restores
from lifeboat.operator import status as statuses

REPO = Path(__file__).resolve().parents[2]
S3_PORT = 18001
S3_ENDPOINT = f"http://127.0.0.1:{S3_PORT}"
BUCKET = "lifeboat-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3() -> str:
    """moto's S3, started by `.ci/services.sh` when it is not running; the shared bucket exists."""
    if not listening(S3_PORT):
        subprocess.run(["bash", str(REPO / ".ci" / "services.sh")], capture_output=True, text=True, timeout=600)
    if not listening(S3_PORT):
        pytest.fail("moto S3 is not running on 127.0.0.1:18001 (bash .ci/services.sh)")
    import boto3
    boto3.client("s3", endpoint_url=S3_ENDPOINT, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket=BUCKET)
    return S3_ENDPOINT


def replica_object(database: Path, port: int, **spec: Any) -> dict[str, Any]:
    """A SQLiteReplica on the test S3, as a user applies it."""
    return {
        "apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteReplica",
        "metadata": {"name": "db", "namespace": "apps"},
        "spec": {
            "database": str(database),
            "replica": {"url": f"s3://{BUCKET}/day2-{uuid.uuid4().hex[:10]}", "endpoint": S3_ENDPOINT,
                        "region": "us-east-1", "forcePathStyle": True, "credentials": {"secretName": "s3-creds"}},
            "syncInterval": "200ms",
            "agent": {"metricsPort": port},
            **spec,
        },
    }


def agent_status(port: int, database: Path) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
            body = json.loads(response.read())
    except OSError:
        return None
    return next((d for d in body.get("databases") or [] if d.get("path") == str(database)), None)


def synced(port: int, database: Path) -> dict[str, Any] | None:
    """/status once everything committed locally is in the replica."""
    db = agent_status(port, database)
    return db if db and db.get("txid") and db.get("remote_txid") == db.get("txid") else None


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)


def test_restore_job_command_restores_the_requested_timestamp(s3: str, env: None, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "app.db"
    create_db(db)
    port = free_port()
    replica = replica_object(db, port)
    config = tmp_path / "lifeboat.yml"  # the ConfigMap's file
    config.write_text(agent_config.render(replica["spec"]))

    # (batch, time by which it was committed and in the replica): the LTX timestamp a point-in-time
    # restore goes by is the time a transaction's file was written, not the COMMIT itself.
    commits: list[tuple[int, datetime]] = []
    with Agent.lifeboat("-config", str(config), log=tmp_path / "agent.log") as agent:
        for batch in (1, 2, 3):
            write_batch(db, batch)
            wait_for(lambda: synced(port, db), what=f"batch {batch} uploaded")
            commits.append((batch, datetime.now(UTC)))
            time.sleep(1.0)  # keep batches well apart: the point in time falls between two of them
        assert agent.stop() == 0, agent.output()
    point = commits[1][1] + (commits[2][1] - commits[1][1]) / 4  # after batch 2, before batch 3 was written
    want = {b for b, at in commits if at <= point}
    assert want == {1, 2}

    # The Job the operator generates for an in-place SQLiteRestore of this Deployment.
    deployment = {"metadata": {"name": "app"}, "spec": {"replicas": 1, "template": {"spec": {
        "containers": [{"name": "app", "image": "app:1", "volumeMounts": [{"name": "data", "mountPath": str(data)}]}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "app-data"}}]}}}}
    spec = {"replica": "db", "target": "inPlace", "verify": True,
            "timestamp": point.isoformat(timespec="milliseconds").replace("+00:00", "Z")}
    where = restores.volume_for("Deployment", deployment, replica["spec"])
    job = restores.job_body("r1", "apps", spec, replica, where, "lifeboat:test")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]

    # The container's world on this machine: the ConfigMap file, the termination-message file, the
    # Secret's keys as environment, `lifeboat` on the PATH; the data volume is mounted at the same path.
    termination = tmp_path / "termination-log"
    mapped = {agent_config.CONFIG_PATH: str(config)}
    argv = [*container["command"], *[mapped.get(arg, arg) for arg in container["args"]]]
    process_env = {**os.environ, **CREDENTIALS,
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for var in container["env"]:
        process_env[var["name"]] = str(termination) if var["value"] == restores.TERMINATION_LOG else var["value"]
    proc = subprocess.run(argv, env=process_env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout

    assert batches(db) == want
    assert integrity(db) == "ok"
    # As the kubelet reports it in the Job pod's status, and as the operator reads it back.
    job_pod = {"status": {"containerStatuses": [{"name": restores.CONTAINER, "state": {"terminated": {
        "exitCode": 0, "message": termination.read_text(), "finishedAt": "2026-01-01T00:00:00Z"}}}]}}
    result = restores.parse_result(restores.termination_message([job_pod]))
    assert result is not None, termination.read_text()
    assert result["integrity_check"] == "ok"
    assert result["db_path"] == str(db)
    seen = restores.Observed(job={"status": {"succeeded": 1}}, job_message=restores.termination_message([job_pod]))
    step = restores.advance(spec, {"phase": "Restoring", "workload": {"kind": "Deployment", "name": "app",
                                                                     "replicas": 1}}, seen)
    assert step.status["result"]["txid"] == result["txid"]
    assert step.status["result"]["integrityCheck"] == "ok"
    assert step.status["result"]["timestamp"] == spec["timestamp"]
    assert step.conditions["Verified"][0] == "True"
    assert step.phase == "ScalingUp"


def test_paused_config_stops_and_resumes_uploads_without_restart(s3: str, env: None, tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    create_db(db)
    port = free_port()
    replica = replica_object(db, port)
    config = tmp_path / "lifeboat.yml"
    config.write_text(agent_config.render(replica["spec"]))
    paused_text = agent_config.render({**replica["spec"], "paused": True})
    assert "paused: true" in paused_text

    with Agent.lifeboat("-config", str(config), log=tmp_path / "agent.log") as agent:
        pid = agent.proc.pid
        write_batch(db, 1)
        before = wait_for(lambda: synced(port, db), what="batch 1 uploaded")
        assert before["paused"] is False

        # The ConfigMap changes: kubelet swaps the file; the agent reloads it.
        config.write_text(paused_text)
        wait_for(lambda: (s := agent_status(port, db)) and s["paused"], what="agent paused")
        write_batch(db, 2)
        time.sleep(3)  # several sync intervals: nothing may be uploaded while paused
        held = agent_status(port, db)
        assert held["paused"] is True and held["remote_txid"] == before["remote_txid"]
        # What the operator's status timer makes of it.
        summary = statuses.summarize([statuses.PodReport("app-0", agent_status={"databases": [held]})],
                                     database=str(db))
        assert summary["paused"] is True and summary["pods"][0]["paused"] is True
        assert statuses.config_applied(summary["pods"])[0] == "True"

        config.write_text(agent_config.render(replica["spec"]))
        resumed = wait_for(lambda: (s := synced(port, db)) and not s["paused"]
                           and s["remote_txid"] > before["remote_txid"] and s, what="uploads resumed")
        assert agent.alive() and agent.proc.pid == pid  # never restarted
        assert not resumed.get("restart_required")
        assert agent.stop() == 0, agent.output()

    out = tmp_path / "restored.db"
    proc = subprocess.run([sys.executable, "-m", "lifeboat.agent.cli", "restore", "-o", str(out), "-config",
                           str(config), str(db)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert batches(out) == {1, 2}
