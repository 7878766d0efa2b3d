"""The pod flow through a real API server: README's commands, the examples, and bytes in S3.

`helm install` (README's line), then README's `kubectl` lines with the examples unchanged apart from
the storage endpoint (moto on 127.0.0.1:18001). The controller-manager turns the Deployment into a
ReplicaSet and a Pod, the API server sends the Pod to the operator's webhook and validates what comes
back, the scheduler binds it to a kwok node and kwok runs it. Then the injected containers of that Pod,
exactly as the API server returned them, run as local processes against moto (`podrun.Pod`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from helpers import create_db, integrity, rows, start_writer, wait_for
from k8s import (
    DEMO_NAMESPACE,
    OPERATOR_NAMESPACE,
    RELEASE,
    S3_ENDPOINT,
    Cluster,
    Operator,
    pod_inputs,
    readme_kubernetes_commands,
    table,
    user_command,
    wait_until,
)
from lifeboat.operator import injection
from lifeboat.operator import spec as specs
from podrun import Pod

BUCKET = "backups"  # examples/replica.yaml: s3://backups/app
PREFIX = "app"
REPLICA = "app-db"
APP_SELECTOR = "app=app"


def s3() -> Any:
    return boto3.client("s3", endpoint_url=S3_ENDPOINT, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def s3_keys() -> list[str]:
    pages = s3().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX + "/")
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def empty_bucket() -> None:
    """The example's bucket, created, without what an earlier run left under its prefix."""
    client = s3()
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    for key in s3_keys():
        client.delete_object(Bucket=BUCKET, Key=key)


def storage_for_the_example(cluster: Cluster) -> None:
    """What a cloud's provisioner would do for the example's PVC: a volume it can bind to."""
    cluster.apply({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "app-data"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": "/var/lib/app-data"}},
    })


def app_pods(cluster: Cluster, phase: str | None = "Running") -> list[dict[str, Any]]:
    pods = cluster.get("pods", namespace=DEMO_NAMESPACE, selector=APP_SELECTOR)["items"]
    return [p for p in pods if phase is None or (p.get("status") or {}).get("phase") == phase]


def replica_condition(cluster: Cluster, type_: str) -> dict[str, Any] | None:
    replica = cluster.get("sqlitereplica", REPLICA, namespace=DEMO_NAMESPACE)
    return next((c for c in (replica.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


@pytest.fixture(scope="module")
def demo(operator: Operator, readme_commands: list[str], tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    """README's commands after `helm install`, run as a user types them, and the app's pod Running."""
    cluster = operator.cluster
    empty_bucket()
    storage_for_the_example(cluster)
    examples = tmp_path_factory.mktemp("examples")
    for line in readme_commands[1:]:
        cluster.run(user_command(line, examples))
    wait_until(lambda: app_pods(cluster), 120, "the app's pod Running")
    return cluster


def test_readme_shows_the_commands_the_tests_run(readme_commands: list[str]) -> None:
    """The commands the fixtures run are README's, in README's order (parsed here, run by `demo`)."""
    assert readme_commands == readme_kubernetes_commands()
    install = "helm install lifeboat ./charts/lifeboat -n lifeboat-system --create-namespace"
    assert readme_commands[0].startswith(install)
    assert "--set agent.image=$REGISTRY/lifeboat-agent:" in readme_commands[0]
    applied = " ".join(readme_commands[1:])
    assert "examples/replica.yaml" in applied and "examples/app-deployment.yaml" in applied


def test_deployment_pod_comes_back_injected_and_runs_on_a_kwok_node(demo: Cluster) -> None:
    (pod,) = app_pods(demo)
    # Created by the controller-manager (Deployment → ReplicaSet → Pod), not by the test.
    (owner,) = pod["metadata"]["ownerReferences"]
    assert owner["kind"] == "ReplicaSet" and owner["controller"] is True
    init = pod["spec"]["initContainers"]
    assert [c["name"] for c in init] == [injection.RESTORE_CONTAINER, injection.AGENT_CONTAINER]
    assert "restartPolicy" not in init[0]
    # The native sidecar, accepted by the Pod API's own validation (an init container that restarts).
    assert init[1]["restartPolicy"] == "Always"
    assert init[1]["startupProbe"]["httpGet"]["port"] == injection.METRICS_PORT_NAME
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app"]
    assert pod["metadata"]["annotations"][specs.INJECTED_ANNOTATION]
    assert pod["spec"]["nodeName"] == "kwok-node-0"
    statuses = {s["name"]: s for s in pod["status"]["initContainerStatuses"]}
    assert set(statuses) == {injection.RESTORE_CONTAINER, injection.AGENT_CONTAINER}


def test_replica_status_and_printer_columns_show_what_the_operator_wrote(demo: Cluster) -> None:
    config = wait_until(lambda: replica_condition(demo, "ConfigReady"), 60, "ConfigReady")
    assert config["status"] == "True", config
    # README's install gives the operator no Secret access (secretNamespaces defaults to
    # watchNamespaces, empty): the chart's RBAC refuses the read and the condition says so.
    credentials = replica_condition(demo, "CredentialsReady")
    assert credentials and (credentials["status"], credentials["reason"]) == ("Unknown", "SecretUnreadable")
    ready = wait_until(lambda: replica_condition(demo, "Ready"), 60, "the status timer's Ready condition")
    (row,) = table(demo.kubectl("get", "sqlr", "-n", DEMO_NAMESPACE).stdout)
    assert list(row) == ["NAME", "DATABASE", "REPLICA", "TXID", "LAG", "READY", "AGE"]
    assert (row["NAME"], row["DATABASE"], row["REPLICA"]) == (REPLICA, "/data/app.db", "s3://backups/app")
    status = demo.get("sqlitereplica", REPLICA, namespace=DEMO_NAMESPACE)["status"]
    assert row["TXID"] == status.get("txid", "")
    assert row["READY"] == ready["status"]


def test_pod_without_the_label_is_left_alone(demo: Cluster) -> None:
    name = f"plain-{uuid.uuid4().hex[:6]}"
    demo.apply(plain_pod(name))
    pod = demo.get("pod", name, namespace=DEMO_NAMESPACE)
    assert "initContainers" not in pod["spec"]
    assert specs.INJECTED_ANNOTATION not in (pod["metadata"].get("annotations") or {})


def test_labelled_pod_without_its_replica_is_refused_with_a_readable_message(demo: Cluster) -> None:
    proc = demo.apply(plain_pod("orphan", replica="no-such-replica"), check=False)
    assert proc.returncode != 0
    assert 'admission webhook "inject.pods.lifeboat.dev" denied the request' in proc.stderr
    assert "names no SQLiteReplica in namespace demo" in proc.stderr
    assert not demo.exists("pod", "orphan", DEMO_NAMESPACE)


def test_operator_down_blocks_labelled_pods_and_only_them(demo: Cluster, operator: Operator) -> None:
    operator.stop()
    try:
        proc = demo.apply(plain_pod("while-down", replica=REPLICA), check=False)
        assert proc.returncode != 0
        assert 'failed calling webhook "inject.pods.lifeboat.dev"' in proc.stderr
        assert not demo.exists("pod", "while-down", DEMO_NAMESPACE)
        demo.apply(plain_pod("unlabelled-while-down"))
        assert demo.exists("pod", "unlabelled-while-down", DEMO_NAMESPACE)
    finally:
        operator.start()
    demo.apply(plain_pod("after-restart", replica=REPLICA))
    pod = demo.get("pod", "after-restart", namespace=DEMO_NAMESPACE)
    assert pod["spec"]["initContainers"][0]["name"] == injection.RESTORE_CONTAINER


def test_an_operator_restarted_after_its_service_account_was_recreated_serves(
    demo: Cluster, operator: Operator
) -> None:
    """A reinstall of the chart recreates the ServiceAccount: tokens of the old one get 401 from then on.

    A restarted operator must authenticate as the account that exists now, as a new pod would.
    """
    account = demo.get("serviceaccount", RELEASE, namespace=OPERATOR_NAMESPACE)
    operator.stop()
    try:
        demo.kubectl("delete", "serviceaccount", RELEASE, "-n", OPERATOR_NAMESPACE)
        metadata = {k: v for k, v in account["metadata"].items()
                    if k in ("name", "namespace", "labels", "annotations")}
        demo.apply({**account, "metadata": metadata})
    finally:
        operator.start()
    demo.apply(plain_pod("after-new-account", replica=REPLICA))
    pod = demo.get("pod", "after-new-account", namespace=DEMO_NAMESPACE)
    assert pod["spec"]["initContainers"][0]["name"] == injection.RESTORE_CONTAINER


def test_a_second_replica_is_flagged_by_the_single_writer_guard(demo: Cluster) -> None:
    demo.kubectl("scale", "deployment", "app", "-n", DEMO_NAMESPACE, "--replicas=2")
    try:
        def flagged() -> dict[str, Any] | None:
            condition = replica_condition(demo, "SingleWriter")
            return condition if condition and condition["status"] == "False" else None

        condition = wait_until(flagged, 90, "SingleWriter=False")
        assert "replicas" in condition["message"], condition
        events = demo.get("events", namespace=DEMO_NAMESPACE)["items"]
        assert any(e["involvedObject"]["name"] == REPLICA and e["type"] == "Warning"
                   and e["message"] == condition["message"] for e in events)
    finally:
        demo.kubectl("scale", "deployment", "app", "-n", DEMO_NAMESPACE, "--replicas=1")


@pytest.fixture
def pods() -> Iterator[list[Pod]]:
    made: list[Pod] = []
    yield made
    for pod in made:
        pod.kill_all()


def test_the_admitted_pod_runs_from_kubectl_apply_to_bytes_in_s3(
    demo: Cluster, tmp_path: Path, pods: list[Pod]
) -> None:
    """The Pod as the API server returned it, its Secret and the operator's ConfigMap as the API holds them."""
    manifest = next(p for p in app_pods(demo) if "deletionTimestamp" not in p["metadata"])
    secrets, configmaps = pod_inputs(demo, manifest)
    assert set(secrets) == {"app-db-s3"}

    def schedule(name: str, disk: Path) -> Pod:
        disk.mkdir(exist_ok=True)
        root = tmp_path / name
        root.mkdir()
        pod = Pod(manifest, root, {"app-data": disk}, configmaps, secrets)
        pods.append(pod)
        return pod

    # The first pod: an empty volume and no replica yet; the restore is a no-op, the sidecar streams.
    disk1 = tmp_path / "pvc-1"
    pod1 = schedule("pod-1", disk1)
    db1 = pod1.container("app").local("/data/app.db")
    pod1.start_init()
    assert not db1.exists()
    create_db(db1)
    writer = start_writer(db1, 0, 100_000, rows=10, pause=0.02)
    try:
        wait_for(lambda: len(s3_keys()) >= 5, 60, what="LTX files in s3://backups/app")
    finally:
        assert pod1.terminate(writer) == 0, pod1.log(injection.AGENT_CONTAINER)
    committed = rows(db1)
    assert committed

    # A new pod on a new, empty volume: the restore init container brings every committed row back.
    pod2 = schedule("pod-2", tmp_path / "pvc-2")
    pod2.start_init()
    db2 = pod2.container("app").local("/data/app.db")
    assert integrity(db2) == "ok"
    assert rows(db2) == committed
    pod2.kill_all()


def plain_pod(name: str, replica: str | None = None) -> dict[str, Any]:
    """A bare pod in the demo namespace, labelled for a SQLiteReplica or not."""
    labels = {"app": "other"} | ({specs.REPLICA_LABEL: replica} if replica else {})
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": DEMO_NAMESPACE, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36",
                                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                 "volumes": [{"name": "data", "emptyDir": {}}]},
    }
