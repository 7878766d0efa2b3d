"""Verification restores (SQLiteReplica spec.verify) on the real API: on demand, on a schedule, failing.

Each test has its own SQLiteReplica, its replica on moto written by a local ``lifeboat replicate -once``,
and an app Deployment whose pod template the verification Job takes its identity from (kwok fakes its
pod). The Job's restore container runs as a local process from the pod spec the API server holds
(`podrun`), against moto; kwok then ends the pod with that run's exit code and termination message
(.ci/kwok-stages.yaml), the Job controller marks the Job, and the operator reads the real result.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sqlite3
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from helpers import LIFEBOAT, create_db, ok, run
from k8s import REPO, S3_ENDPOINT, Cluster, Operator, pod_inputs, wait_until
from podrun import Pod

NAMESPACE = "verify"
DATABASE = "/data/app.db"
BUCKET = "backups"
YEARLY = "0 0 1 1 *"  # never during a test: only the annotation starts these verifications
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "verify", "AWS_SECRET_ACCESS_KEY": "verify"}


def _s3() -> Any:
    return boto3.client("s3", endpoint_url=S3_ENDPOINT, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


@pytest.fixture(scope="module")
def kube(operator: Operator) -> Cluster:
    """The cluster, with the operator running, this module's namespace and its S3 credentials."""
    cluster = operator.cluster
    cluster.kubectl("create", "namespace", NAMESPACE)
    client = _s3()
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3", "namespace": NAMESPACE},
                   "stringData": CREDENTIALS})
    return cluster


def replicated(workdir: Path) -> str:
    """A database replicated to a fresh prefix on moto (two transactions); the prefix."""
    prefix = f"verify/{uuid.uuid4().hex}"
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "app.db"
    create_db(db)
    config = workdir / "lifeboat.yml"
    config.write_text(yaml.safe_dump({"dbs": [{"path": str(db), "replica": {
        "url": f"s3://{BUCKET}/{prefix}", "endpoint": S3_ENDPOINT, "region": "us-east-1",
        "force-path-style": True}}]}))
    env = {**os.environ, **CREDENTIALS}
    for batch in range(2):
        with sqlite3.connect(db) as conn:
            conn.executemany("INSERT INTO t (batch, v) VALUES (?, ?)", [(batch, "x" * 100)] * 50)
        ok(run([*LIFEBOAT, "replicate", "-once", "-config", str(config)], env=env))
    return prefix


def start(cluster: Cluster, name: str, prefix: str, schedule: str, **verify: Any) -> None:
    """The SQLiteReplica with spec.verify, and its app (a Deployment with its own ServiceAccount) Running."""
    labels = {"app": name, "lifeboat.dev/replica": name}
    cluster.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": f"{name}-identity", "namespace": NAMESPACE}},
        {"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteReplica",
         "metadata": {"name": name, "namespace": NAMESPACE},
         "spec": {"database": DATABASE, "verify": {"schedule": schedule, **verify},
                  "replica": {"url": f"s3://{BUCKET}/{prefix}", "endpoint": S3_ENDPOINT, "region": "us-east-1",
                              "forcePathStyle": True, "credentials": {"secretName": "s3"}}}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NAMESPACE},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "serviceAccountName": f"{name}-identity",
                      "securityContext": {"runAsUser": 1000, "fsGroup": 1000},
                      "containers": [{"name": "app", "image": "app:1",
                                      "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                      "volumes": [{"name": "data", "emptyDir": {}}]}}}})
    wait_until(lambda: running_pods(cluster, f"app={name}"), 120, f"{name}'s pod Running")


def running_pods(cluster: Cluster, selector: str) -> list[dict[str, Any]]:
    return [p for p in cluster.get("pods", namespace=NAMESPACE, selector=selector)["items"]
            if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]]


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.get("sqlitereplica", name, namespace=NAMESPACE).get("status") or {}


def condition(found: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in found.get("conditions") or [] if c["type"] == type_), {})


def request(cluster: Cluster, name: str) -> str:
    """Ask for a verification now, as a client does: the annotation, an RFC 3339 time."""
    value = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    cluster.kubectl("annotate", "sqlitereplica", name, "-n", NAMESPACE, "--overwrite",
                    f"lifeboat.dev/verify-requested={value}")
    return value


def run_job(cluster: Cluster, name: str, workdir: Path) -> tuple[dict[str, Any], int, str]:
    """The verification Job's pod as the API server holds it, its container run here; kwok then ends the
    pod with that run's exit code and termination message. (pod, exit code, message)"""
    job = wait_until(lambda: (status(cluster, name).get("verification") or {}).get("job"), 120,
                     f"{name}'s verification Job")
    (pod,) = wait_until(lambda: running_pods(cluster, f"job-name={job}"), 120, f"Job {job}'s pod Running")
    secrets, configmaps = pod_inputs(cluster, pod)
    workdir.mkdir(parents=True)
    local = Pod(pod, workdir / "pod", {}, configmaps, secrets)
    (spec,) = pod["spec"]["containers"]
    container = local.container(spec["name"])
    result = workdir / "termination-log"  # the kubelet's terminationMessagePath
    env = {**container.env, "LIFEBOAT_RESULT": str(result),
           "PATH": f"{Path(sys.executable).parent}:{container.env['PATH']}"}
    proc = subprocess.run([*spec["command"], *container.args], env=env, capture_output=True, text=True,
                          timeout=120)
    message = result.read_text() if result.exists() else ""
    if proc.returncode != 0 and not message.strip():  # terminationMessagePolicy: FallbackToLogsOnError
        message = (proc.stdout + proc.stderr)[-2048:]
    cluster.kubectl("annotate", "pod", pod["metadata"]["name"], "-n", NAMESPACE,
                    f"kwok.lifeboat.dev/message={message}", f"kwok.lifeboat.dev/exit-code={proc.returncode}")
    return pod, proc.returncode, message


def finished(cluster: Cluster, name: str, requested: str | None = None) -> dict[str, Any]:
    """status.lastVerification once it records the verification ``requested`` (or any, when None)."""
    def done() -> dict[str, Any] | None:
        last = status(cluster, name).get("lastVerification") or {}
        return last if last.get("result") and (requested is None or last.get("requested") == requested) else None
    return wait_until(done, 120, f"{name}'s verification recorded")


def metric(operator: Operator, family: str, replica: str) -> float | None:
    """A sample of the operator's /metrics for this replica, or None when it has none."""
    assert operator.proc is not None
    # The last one: the local port that Operator.start adds after the chart's own.
    port = [a.split("=", 1)[1] for a in operator.proc.args if str(a).startswith("--metrics-port=")][-1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = f'{family}{{namespace="{NAMESPACE}",replica="{replica}"}} '
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(wanted)), None)


def test_an_annotation_runs_a_verification_now_and_the_status_echoes_it(
    kube: Cluster, operator: Operator, tmp_path: Path,
) -> None:
    name = "on-demand"
    start(kube, name, replicated(tmp_path / "source"), YEARLY, integrityCheck="quick")
    requested = request(kube, name)
    pod, code, message = run_job(kube, name, tmp_path / "job")
    assert code == 0, message

    spec = pod["spec"]
    assert spec["serviceAccountName"] == f"{name}-identity"  # the app's cloud identity
    assert spec["securityContext"] == {"runAsUser": 1000, "fsGroup": 1000}
    assert not any("persistentVolumeClaim" in v for v in spec["volumes"])  # never the app's own volume
    assert any("emptyDir" in v for v in spec["volumes"])
    (container,) = spec["containers"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["args"][:4] == ["restore", "-json", "-integrity-check", "quick"]

    last = finished(kube, name, requested)
    restored = yaml.safe_load(message.strip().splitlines()[-1])
    assert (last["result"], last["requested"], last["target"]) == ("Succeeded", requested, "latest"), last
    assert last["txid"] == restored["txid"] and last["duration"].endswith("s")
    verified = condition(status(kube, name), "Verified")
    assert (verified["status"], verified["reason"]) == ("True", "Verified"), verified
    when = datetime.datetime.fromisoformat(last["time"].replace("Z", "+00:00")).timestamp()
    assert metric(operator, "lifeboat_restore_verified_timestamp_seconds", name) == when
    assert metric(operator, "lifeboat_restore_verification_interval_seconds", name) == 366 * 86400
    row = kube.kubectl("get", "sqlitereplica", name, "-n", NAMESPACE).stdout
    assert "VERIFIED" in row.splitlines()[0] and "True" in row.splitlines()[1]


def test_a_corrupted_replica_file_fails_the_verification_naming_the_file(
    kube: Cluster, operator: Operator, tmp_path: Path,
) -> None:
    name = "corrupted"
    prefix = replicated(tmp_path / "source")
    client = _s3()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")["Contents"]
            if o["Key"].endswith(".ltx")]
    for key in keys:  # a flipped byte in the page data: same size, wrong checksum
        data = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        data[len(data) // 2] ^= 0xFF
        client.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    start(kube, name, prefix, YEARLY)
    before = metric(operator, "lifeboat_restore_verification_failures_total", name) or 0.0

    requested = request(kube, name)
    _, code, message = run_job(kube, name, tmp_path / "job")
    assert code != 0, message
    last = finished(kube, name, requested)
    assert last["result"] == "Failed", last
    (named,) = [key.rsplit("/", 1)[1] for key in keys if key.rsplit("/", 1)[1] in last["message"]]
    assert "\n" not in last["message"]
    verified = condition(status(kube, name), "Verified")
    assert (verified["status"], verified["reason"]) == ("False", "VerificationFailed"), verified
    assert named in verified["message"]
    assert metric(operator, "lifeboat_restore_verification_failures_total", name) == before + 1
    events = [e for e in kube.get("events", namespace=NAMESPACE)["items"]
              if e["involvedObject"]["name"] == name and e["reason"] == "VerificationFailed"]
    assert events and events[0]["type"] == "Warning" and named in events[0]["message"], events


def test_the_schedule_runs_a_verification(kube: Cluster, operator: Operator, tmp_path: Path) -> None:
    name = "scheduled"
    start(kube, name, replicated(tmp_path / "source"), "* * * * *", timestamp="random-in-window")
    # The first run comes at the next minute after the operator first saw the schedule.
    _, code, message = run_job(kube, name, tmp_path / "job")
    assert code == 0, message
    last = finished(kube, name)
    assert last["result"] == "Succeeded" and last.get("requested") is None, last
    assert last["target"].endswith("Z")  # a point within the retention window, not "latest"
    state = status(kube, name)["verification"]
    assert state["lastScheduleTime"] > state["since"]
    assert metric(operator, "lifeboat_restore_verification_interval_seconds", name) == 60

    # No schedule, no alert: its series go, and a schedule set again starts counting afresh.
    kube.kubectl("patch", "sqlitereplica", name, "-n", NAMESPACE, "--type=json",
                 "-p", '[{"op": "remove", "path": "/spec/verify"}]')
    wait_until(lambda: metric(operator, "lifeboat_restore_verification_interval_seconds", name) is None, 60,
               "the interval series dropped")
    assert metric(operator, "lifeboat_restore_verification_since_timestamp_seconds", name) is None
    wait_until(lambda: "since" not in (status(kube, name).get("verification") or {}), 60, "the schedule forgotten")
    assert metric(operator, "lifeboat_restore_verified_timestamp_seconds", name)  # the last success stays
    kube.kubectl("delete", "sqlitereplica", name, "-n", NAMESPACE)  # its Jobs go with it (owner references)
    wait_until(lambda: metric(operator, "lifeboat_restore_verified_timestamp_seconds", name) is None, 60,
               "the deleted replica's series dropped")


def test_the_readmes_verification_commands_run(kube: Cluster, tmp_path: Path) -> None:
    """README's block, on this namespace's replica: the example patch, the annotation, kubectl wait."""
    name = "readme"
    start(kube, name, replicated(tmp_path / "source"), YEARLY)
    section = (REPO / "README.md").read_text().split("### Verifying that backups restore", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README's verification section has no ```sh block"
    script = block.group(1).replace("-n demo", f"-n {NAMESPACE}").replace("app-db", name)
    client = subprocess.Popen(["bash", "-euc", script], env=kube.env(), cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, code, message = run_job(kube, name, tmp_path / "job")
        out, err = client.communicate(timeout=180)
    finally:
        client.kill()
    assert code == 0, message
    assert client.returncode == 0, err
    last = json.loads(out.strip().splitlines()[-1])
    assert last["result"] == "Succeeded" and last["target"] != "latest", last  # the example's random-in-window
    example = yaml.safe_load((REPO / "examples" / "replica-verify.yaml").read_text())
    stored = kube.get("sqlitereplica", name, namespace=NAMESPACE)["spec"]["verify"]
    assert stored == example["spec"]["verify"]


@pytest.mark.parametrize(("schedule", "refusal"), [
    ("61 * * * *", "spec.verify.schedule: Invalid value"),
    ("0 0 * 13 *", "month 1-12"),
    ("every day", "spec.verify.schedule: Invalid value"),
])
def test_a_bad_schedule_is_refused_naming_the_field(kube: Cluster, schedule: str, refusal: str) -> None:
    refused = kube.apply({"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteReplica",
                          "metadata": {"name": "bad-schedule", "namespace": NAMESPACE},
                          "spec": {"database": DATABASE, "verify": {"schedule": schedule},
                                   "replica": {"url": f"s3://{BUCKET}/bad"}}}, check=False)
    assert refused.returncode != 0 and refusal in refused.stderr, refused.stderr
