"""Day-2 flows on the real API: SQLiteRestores run by the operator with the controller-manager's Jobs.

A Deployment's injected pod runs locally first (`podrun`) so the replica on moto holds a database. A
SQLiteRestore then goes through the operator: in place it scales the Deployment to 0 through the scale
subresource (the controller-manager deletes the pod, kwok lets it go), creates the Job (the Job
controller makes its pod, the scheduler binds it, kwok runs it), and scales back. The Job's restore
container runs as a local process from the Pod spec the API server holds, against moto; kwok then ends
the Job's pod with that run's exit code and termination message, so the operator reads the real result.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from helpers import create_db, rows, start_writer, wait_for
from inplace import bound_claim
from k8s import S3_ENDPOINT, Cluster, Operator, pod_inputs, table, wait_until
from lifeboat.operator import injection
from podrun import Pod

NAMESPACE = "day2"
REPLICA = "db"
DATABASE = "/data/app.db"
APP = "app"


def manifests(prefix: str) -> list[dict[str, Any]]:
    labels = {"app": APP, "lifeboat.dev/replica": REPLICA}
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3", "namespace": NAMESPACE},
         "stringData": {"AWS_ACCESS_KEY_ID": "day2", "AWS_SECRET_ACCESS_KEY": "day2"}},
        {"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteReplica",
         "metadata": {"name": REPLICA, "namespace": NAMESPACE},
         "spec": {"database": DATABASE, "syncInterval": "100ms", "agent": {"metricsPort": 19090},
                  "replica": {"url": f"s3://backups/{prefix}", "endpoint": S3_ENDPOINT, "region": "us-east-1",
                              "forcePathStyle": True, "credentials": {"secretName": "s3"}}}},
        *bound_claim(NAMESPACE, "data"),
        *bound_claim(NAMESPACE, "restored"),
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": APP, "namespace": NAMESPACE},
         "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": {"app": APP}},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "containers": [{"name": "app", "image": "app:1",
                                      "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                      "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}}}},
    ]


def _s3() -> Any:
    return boto3.client("s3", endpoint_url=S3_ENDPOINT, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def s3_keys(prefix: str) -> list[str]:
    return [o["Key"] for o in _s3().list_objects_v2(Bucket="backups", Prefix=prefix + "/").get("Contents", [])]


def running_pods(cluster: Cluster, selector: str) -> list[dict[str, Any]]:
    return [p for p in cluster.get("pods", namespace=NAMESPACE, selector=selector)["items"]
            if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]]


def replicas(cluster: Cluster) -> int:
    return int(cluster.get("deployment", APP, namespace=NAMESPACE)["spec"]["replicas"])


@pytest.fixture(scope="module")
def app(operator: Operator, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The Deployment Running, and its injected pod run once locally: the replica holds rows."""
    cluster = operator.cluster
    cluster.kubectl("create", "namespace", NAMESPACE)
    client = _s3()
    # These tests may run first on a fresh S3 server: the bucket is theirs to make.
    if "backups" not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket="backups")
    prefix = f"day2/{uuid.uuid4().hex}"
    cluster.apply(*manifests(prefix))
    (pod,) = wait_until(lambda: running_pods(cluster, f"app={APP}"), 120, "the app's pod Running")
    secrets, configmaps = pod_inputs(cluster, pod)
    root = tmp_path_factory.mktemp("app-pod")
    (root / "pvc").mkdir()
    local = Pod(pod, root / "pod", {"data": root / "pvc"}, configmaps, secrets)
    try:
        local.start_init()
        db = local.container("app").local(DATABASE)
        create_db(db)
        writer = start_writer(db, 0, 100_000, rows=10, pause=0.02)
        # (lock.json comes first; LTX files follow once the agent follows the new database)
        wait_for(lambda: any(k.endswith(".ltx") for k in s3_keys(prefix)), 60, what=f"LTX files under {prefix}")
        assert local.terminate(writer) == 0, local.log(injection.AGENT_CONTAINER)
    finally:
        local.kill_all()
    return {"cluster": cluster, "rows": rows(db), "prefix": prefix}


def run_job_pod_locally(cluster: Cluster, job: str, workdir: Path) -> tuple[int, str, Path]:
    """The Job's pod as the API server holds it, its restore container run here: (exit code, message, disk)."""
    (pod,) = wait_until(lambda: running_pods(cluster, f"job-name={job}"), 90, f"Job {job}'s pod Running")
    secrets, configmaps = pod_inputs(cluster, pod)
    disk = workdir / "disk"
    disk.mkdir(parents=True)
    (workdir / "pod").mkdir()
    claim = next(v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
                 if "persistentVolumeClaim" in v)
    local = Pod(pod, workdir / "pod", {claim: disk}, configmaps, secrets)
    (spec,) = pod["spec"]["containers"]
    container = local.container(spec["name"])
    result = workdir / "termination-log"  # the kubelet's /dev/termination-log
    env = {**container.env, "LIFEBOAT_RESULT": str(result),
           "PATH": f"{Path(sys.executable).parent}:{container.env['PATH']}"}
    proc = subprocess.run([*spec["command"], *container.args], env=env, capture_output=True, text=True,
                          timeout=120)
    message = result.read_text() if result.exists() else ""
    if proc.returncode != 0 and not message.strip():  # terminationMessagePolicy: FallbackToLogsOnError
        message = (proc.stdout + proc.stderr)[-2048:]
    return proc.returncode, message, disk


def end_pod(cluster: Cluster, job: str, code: int, message: str) -> None:
    """kwok ends the Job's pod with this exit code and termination message (.ci/kwok-stages.yaml)."""
    (pod,) = running_pods(cluster, f"job-name={job}")
    cluster.kubectl("annotate", "pod", pod["metadata"]["name"], "-n", NAMESPACE,
                    f"kwok.lifeboat.dev/message={message}", f"kwok.lifeboat.dev/exit-code={code}")


def restore(cluster: Cluster, name: str, **spec: Any) -> None:
    cluster.apply({"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteRestore",
                   "metadata": {"name": name, "namespace": NAMESPACE}, "spec": {"replica": REPLICA, **spec}})


def restore_status(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.get("sqliterestore", name, namespace=NAMESPACE).get("status") or {}


def finished(cluster: Cluster, name: str) -> dict[str, Any] | None:
    status = restore_status(cluster, name)
    return status if status.get("phase") in ("Succeeded", "Failed") else None


def test_in_place_restore_scales_down_runs_the_job_and_scales_back(app: dict[str, Any], tmp_path: Path) -> None:
    cluster: Cluster = app["cluster"]
    restore(cluster, "in-place", target="inPlace", verify=True)
    wait_until(lambda: replicas(cluster) == 0, 60, "the Deployment scaled to 0")
    job = wait_until(lambda: restore_status(cluster, "in-place").get("job"), 90, "the restore Job")
    assert not running_pods(cluster, f"app={APP}"), "the Job started while the app still ran"
    code, message, disk = run_job_pod_locally(cluster, job, tmp_path)
    assert code == 0, message
    end_pod(cluster, job, code, message)
    status = wait_until(lambda: finished(cluster, "in-place"), 90, "the restore to finish")
    assert status["phase"] == "Succeeded", status
    assert status["result"]["integrityCheck"] == "ok"
    assert status["result"]["txid"]
    assert replicas(cluster) == 1
    assert rows(disk / "app.db") == app["rows"]
    (row,) = table(cluster.kubectl("get", "sqlrestore", "in-place", "-n", NAMESPACE).stdout)
    assert (row["REPLICA"], row["PHASE"], row["TXID"], row["INTEGRITY"]) == (
        REPLICA, "Succeeded", status["result"]["txid"], "ok")
    wait_until(lambda: running_pods(cluster, f"app={APP}"), 90, "the app running again")


def test_a_failed_job_scales_the_app_back_and_says_why(app: dict[str, Any], tmp_path: Path) -> None:
    cluster: Cluster = app["cluster"]
    restore(cluster, "too-far", target="inPlace", txid="00000000ffffffff")
    job = wait_until(lambda: restore_status(cluster, "too-far").get("job"), 120, "the restore Job")
    code, message, _ = run_job_pod_locally(cluster, job, tmp_path)
    assert code != 0, message
    # The Job has backoffLimit 2: each of its pods fails the same way until the Job does.
    for _attempt in range(3):
        if finished(cluster, "too-far"):
            break
        wait_until(lambda: running_pods(cluster, f"job-name={job}") or finished(cluster, "too-far"), 90,
                   "the next Job pod or the end")
        if running_pods(cluster, f"job-name={job}"):
            end_pod(cluster, job, code, message)
        wait_until(lambda: not running_pods(cluster, f"job-name={job}"), 60, "the Job pod to end")
    status = wait_until(lambda: finished(cluster, "too-far"), 120, "the restore to fail")
    assert status["phase"] == "Failed", status
    assert "restore Job failed" in status["error"]
    assert replicas(cluster) == 1


def test_restore_into_another_pvc_leaves_the_app_alone(app: dict[str, Any], tmp_path: Path) -> None:
    cluster: Cluster = app["cluster"]
    restore(cluster, "side", target={"pvc": "restored"})
    job = wait_until(lambda: restore_status(cluster, "side").get("job"), 60, "the restore Job")
    assert replicas(cluster) == 1 and running_pods(cluster, f"app={APP}")
    code, message, disk = run_job_pod_locally(cluster, job, tmp_path)
    assert code == 0, message
    end_pod(cluster, job, code, message)
    status = wait_until(lambda: finished(cluster, "side"), 90, "the restore to finish")
    assert status["phase"] == "Succeeded", status
    assert rows(disk / "app.db") == app["rows"]


def configmap_text(cluster: Cluster, replica: str) -> str:
    return cluster.get("configmap", f"{replica}-lifeboat", namespace=NAMESPACE)["data"]["lifeboat.yml"]


def test_paused_reaches_the_agent_config_and_back(app: dict[str, Any]) -> None:
    cluster: Cluster = app["cluster"]
    patch = '{"spec": {"paused": %s}}'
    cluster.kubectl("patch", "sqlitereplica", REPLICA, "-n", NAMESPACE, "--type=merge", "-p", patch % "true")
    wait_until(lambda: "paused: true" in configmap_text(cluster, REPLICA), 30, "paused in the agent config")
    cluster.kubectl("patch", "sqlitereplica", REPLICA, "-n", NAMESPACE, "--type=merge", "-p", patch % "false")
    wait_until(lambda: "paused" not in configmap_text(cluster, REPLICA), 30, "paused gone from the agent config")


def condition(cluster: Cluster, replica: str, type_: str) -> dict[str, Any]:
    status = cluster.get("sqlitereplica", replica, namespace=NAMESPACE).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def test_pods_from_before_the_webhook_are_reported_then_recreated_injected(app: dict[str, Any]) -> None:
    """Drift: a Deployment whose pods started while no webhook existed (deleted here, as before an install)."""
    cluster: Cluster = app["cluster"]
    replica, *_ = [m for m in manifests("day2/legacy") if m["kind"] == "SQLiteReplica"]
    replica["metadata"]["name"] = "legacy"
    deployment = next(m for m in manifests("day2/legacy") if m["kind"] == "Deployment")
    deployment["metadata"]["name"] = "legacy"
    template = deployment["spec"]["template"]
    deployment["spec"]["selector"]["matchLabels"] = template["metadata"]["labels"] = {
        "app": "legacy", "lifeboat.dev/replica": "legacy"}
    template["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    cluster.apply(replica)

    webhook = cluster.get("mutatingwebhookconfiguration", "lifeboat")
    for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
        webhook["metadata"].pop(key, None)
    cluster.kubectl("delete", "mutatingwebhookconfiguration", "lifeboat")
    try:
        cluster.apply(deployment)
        (old,) = wait_until(lambda: running_pods(cluster, "app=legacy"), 90, "the legacy pod Running")
    finally:
        cluster.apply(webhook)
    assert "initContainers" not in old["spec"]

    def reported() -> dict[str, Any] | None:
        found = condition(cluster, "legacy", "Injected")
        return found if found.get("status") == "False" else None

    verdict = wait_until(reported, 60, "Injected=False")
    assert verdict["reason"] == "UninjectedPods"
    assert old["metadata"]["name"] in verdict["message"]
    assert "spec.recreateUninjected: true" in verdict["message"]
    assert running_pods(cluster, "app=legacy")[0]["metadata"]["uid"] == old["metadata"]["uid"], "deleted unasked"

    cluster.kubectl("patch", "sqlitereplica", "legacy", "-n", NAMESPACE, "--type=merge",
                    "-p", '{"spec": {"recreateUninjected": true}}')

    def recreated() -> dict[str, Any] | None:
        pods = running_pods(cluster, "app=legacy")
        return pods[0] if len(pods) == 1 and pods[0]["metadata"]["uid"] != old["metadata"]["uid"] else None

    new = wait_until(recreated, 90, "the ReplicaSet's new pod")
    assert [c["name"] for c in new["spec"]["initContainers"]] == [injection.RESTORE_CONTAINER,
                                                                  injection.AGENT_CONTAINER]
    wait_until(lambda: condition(cluster, "legacy", "Injected").get("status") == "True", 60, "Injected=True")
