"""Read replicas through a real API server: examples/follow-deployment.yaml's followers of one writer.

The SQLiteReplica (examples/replica.yaml) and the follower Deployment with its two Services
(examples/follow-deployment.yaml) are applied as a user would, in a namespace of their own and with
the storage pointed at moto; the writer is a bare pod labelled for the replica. The controller-manager
makes the followers' pods, the webhook injects them, kwok runs them with loopback pod IPs. Then every
injected container, exactly as the API server returned it, runs as a local process (`podrun.Pod`)
listening on its pod's IP: the writer's agent uploads to moto while the followers apply, and the
operator's status timer reads the followers' /metrics at their pod IPs.
"""

from __future__ import annotations

import statistics
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from helpers import batches, create_db, start_writer, wait_for, write_batch
from k8s import S3_ENDPOINT, Cluster, Operator, example, pod_inputs, table, wait_until
from lifeboat.operator import injection
from lifeboat.operator import spec as specs
from podrun import Pod

NAMESPACE = "follow-demo"
REPLICA = "app-db"  # examples/replica.yaml
BUCKET = "backups"
READERS = "app=app-reader"  # examples/follow-deployment.yaml
WRITER = "writer"


def manifest(name: str, directory: Path, prefix: str) -> Path:
    """An example in this test's namespace, its replica under a prefix of this run's own."""
    path = example(name, directory)
    text = path.read_text().replace("namespace: demo", f"namespace: {NAMESPACE}")
    path.write_text(text.replace("s3://backups/app", f"s3://{BUCKET}/{prefix}"))
    return path


def labelled_pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "app", **labels}},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36",
                                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                 "volumes": [{"name": "data", "emptyDir": {}}]},
    }


def running(cluster: Cluster, selector: str) -> list[dict[str, Any]]:
    pods = cluster.get("pods", namespace=NAMESPACE, selector=selector)["items"]
    return [p for p in pods if (p.get("status") or {}).get("phase") == "Running" and p["status"].get("podIP")
            and "deletionTimestamp" not in p["metadata"]]


def replica_status(cluster: Cluster) -> dict[str, Any]:
    return cluster.get("sqlitereplica", REPLICA, namespace=NAMESPACE).get("status") or {}


def follow_metrics(pod: Pod) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{pod.ip}:9090/metrics", timeout=5) as response:
        text = response.read().decode()
    return {line.split("{")[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("lifeboat_follow_")}


@pytest.fixture(scope="module")
def demo(operator: Operator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The namespace with the example replica (on moto) and a writer pod admitted."""
    cluster = operator.cluster
    s3 = boto3.client("s3", endpoint_url=S3_ENDPOINT, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
    examples = tmp_path_factory.mktemp("follow-examples")
    prefix = f"follow-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", NAMESPACE)
    try:
        cluster.kubectl("apply", "-f", str(manifest("replica.yaml", examples, prefix)))
        cluster.apply(labelled_pod(WRITER, {specs.REPLICA_LABEL: REPLICA}))
        cluster.kubectl("apply", "-f", str(manifest("follow-deployment.yaml", examples, prefix)))
        yield cluster
    finally:
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


@pytest.fixture
def pods() -> Iterator[list[Pod]]:
    made: list[Pod] = []
    yield made
    for pod in made:
        pod.kill_all()


def test_followers_are_injected_with_the_follow_sidecar(demo: Cluster) -> None:
    readers = wait_until(lambda: len(running(demo, READERS)) == 2 and running(demo, READERS), 120,
                         "the example's two follower pods Running")
    for pod in readers:
        init = pod["spec"]["initContainers"]
        assert [c["name"] for c in init] == [injection.RESTORE_CONTAINER, injection.FOLLOW_CONTAINER]
        assert "-follow-ready" in init[0]["args"]
        sidecar = init[1]
        assert sidecar["restartPolicy"] == "Always"
        assert sidecar["args"][:4] == ["restore", "-f", "-follow-interval", "1s"]  # the CRD's default
        assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"
        assert pod["metadata"]["annotations"][specs.INJECTED_ANNOTATION] == REPLICA
        # kwok's pod addresses are on loopback (.ci/cluster.sh), where podrun's processes listen.
        assert pod["status"]["podIP"].startswith("127.")


def test_a_pod_with_both_labels_is_refused(demo: Cluster) -> None:
    both = labelled_pod("both", {specs.REPLICA_LABEL: REPLICA, specs.FOLLOW_LABEL: REPLICA})
    proc = demo.apply(both, check=False)
    assert proc.returncode != 0
    assert "denied the request" in proc.stderr
    assert f"pod carries both {specs.REPLICA_LABEL}" in proc.stderr and specs.FOLLOW_LABEL in proc.stderr
    assert not demo.exists("pod", "both", NAMESPACE)


def test_the_single_writer_guard_does_not_count_followers(demo: Cluster) -> None:
    wait_until(lambda: len(running(demo, READERS)) == 2, 120, "the follower pods Running")
    wait_until(lambda: running(demo, f"{specs.REPLICA_LABEL}={REPLICA}"), 120, "the writer pod Running")

    def verdict() -> dict[str, Any] | None:
        conditions = {c["type"]: c for c in replica_status(demo).get("conditions") or []}
        condition = conditions.get("SingleWriter")
        return condition if condition and "1 pod(s) run the agent" in condition["message"] else None

    condition = wait_until(verdict, 90, "SingleWriter counting the one writer")
    assert condition["status"] == "True", condition


def test_followers_apply_the_writers_commits_and_show_in_the_status(
    demo: Cluster, tmp_path: Path, pods: list[Pod]
) -> None:
    (writer_manifest,) = wait_until(lambda: running(demo, f"{specs.REPLICA_LABEL}={REPLICA}"), 120,
                                    "the writer pod Running")
    secrets, configmaps = pod_inputs(demo, writer_manifest)

    def schedule(pod_manifest: dict[str, Any]) -> Pod:
        root = tmp_path / pod_manifest["metadata"]["name"]
        root.mkdir()
        pod = Pod(pod_manifest, root, {}, configmaps, secrets)
        pods.append(pod)
        return pod

    writer = schedule(writer_manifest)
    writer.start_init()
    db = writer.container("app").local("/data/app.db")
    create_db(db)
    write_batch(db, 1)
    readers = [schedule(p) for p in wait_until(lambda: len(running(demo, READERS)) == 2 and running(demo, READERS),
                                               120, "the follower pods Running")]
    for reader in readers:
        reader.start_init()  # the restore, then the sidecar with its startupProbe (/readyz) awaited
        assert follow_metrics(reader)["lifeboat_follow_ready"] == 1
    copies = [reader.container("app").local("/data/app.db") for reader in readers]

    # The writer commits at 20/s meanwhile; every commit reaches every follower.
    background = start_writer(db, 2, 200, rows=5, pause=0.05)
    delays: list[float] = []
    sampled: list[float] = []
    try:
        for batch in range(1000, 1010):
            write_batch(db, batch)
            committed = time.monotonic()
            for copy in copies:
                wait_for(lambda c=copy, b=batch: b in batches(c), 60, interval=0.02, what=f"batch {batch} followed")
            delays.append(time.monotonic() - committed)
            sampled += [follow_metrics(reader)["lifeboat_follow_lag_seconds"] for reader in readers]
    finally:
        background.wait(timeout=120)
    want = batches(db)
    for copy in copies:
        wait_for(lambda c=copy: batches(c) == want, 60, interval=0.1, what="every batch followed")
    print(f"\nfollow lag, commit to both followers (S3, followInterval 1s): p50 {statistics.median(delays):.2f}s "
          f"max {max(delays):.2f}s; lifeboat_follow_lag_seconds samples: median {statistics.median(sampled):.2f}s "
          f"max {max(sampled):.2f}s")

    def reported() -> dict[str, Any] | None:
        status = replica_status(demo)
        entries = status.get("followerPods") or []
        done = status.get("followers") == 2 and all(e.get("ready") and e.get("txid") for e in entries)
        return status if done else None

    status = wait_until(reported, 90, "the status timer's follower entries")
    assert {e["name"] for e in status["followerPods"]} == {p.manifest["metadata"]["name"] for p in readers}
    assert status["followLagSeconds"] is not None
    (row,) = table(demo.kubectl("get", "sqlr", "-n", NAMESPACE).stdout)
    assert row["FOLLOWERS"] == "2", row
    assert row["FOLLOW-LAG"] != "", row
