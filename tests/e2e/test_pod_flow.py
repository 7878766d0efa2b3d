"""Issue #6, end to end as processes: the pod the operator's webhook produces, run the way the kubelet runs it.

A SQLiteReplica for an S3 replica on moto (127.0.0.1:18001, path-style, credentials from a Secret) and
an app pod go through `injection.inject()`. Each injected container then runs as a local process, with
exactly the command, args, env and mounts the mutated pod gives it (`podrun.Pod`); the ConfigMap holds
the config `agent_config.render()` produced.
"""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import create_db, integrity, rows, start_writer, wait_for, write_batch
from lifeboat.operator import agent_config, injection
from lifeboat.operator import spec as specs
from podrun import Pod

REPO = Path(__file__).resolve().parents[2]
S3_PORT = 18001
S3_ENDPOINT = f"http://127.0.0.1:{S3_PORT}"
BUCKET = "lifeboat-pod-flow"
SECRET_NAME = "app-s3"
# The Secret as the cluster holds it (moto accepts any key pair).
SECRETS = {SECRET_NAME: {"AWS_ACCESS_KEY_ID": "pod-flow-key", "AWS_SECRET_ACCESS_KEY": "pod-flow-secret"}}
DATABASE = "/data/app.db"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_bucket() -> str:
    """moto's S3 on 127.0.0.1:18001 (started with `.ci/services.sh` when down) with the test bucket."""
    if not _listening(S3_PORT):
        subprocess.run(["bash", str(REPO / ".ci" / "services.sh")], capture_output=True, timeout=600)
    assert _listening(S3_PORT), "moto S3 is not running (bash .ci/services.sh)"
    import boto3

    s3 = boto3.client("s3", endpoint_url=S3_ENDPOINT, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    s3.create_bucket(Bucket=BUCKET)
    return BUCKET


def _s3_keys(prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=S3_ENDPOINT, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def make_replica(prefix: str, port: int) -> dict[str, Any]:
    """The SQLiteReplica a user applies for an S3 replica on moto."""
    return {
        "apiVersion": f"{specs.GROUP}/{specs.VERSION}",
        "kind": specs.KIND,
        "metadata": {"name": "app-db", "namespace": "apps"},
        "spec": {
            "database": DATABASE,
            "replica": {"url": f"s3://{BUCKET}/{prefix}", "endpoint": S3_ENDPOINT, "region": "us-east-1",
                        "forcePathStyle": True, "credentials": {"secretName": SECRET_NAME}},
            "syncInterval": "100ms",
            "agent": {"metricsPort": port},
        },
    }


def make_pod() -> dict[str, Any]:
    """An app pod as a Deployment creates it: the database on a PVC mounted at /data."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "app-", "labels": {"app": "app", specs.REPLICA_LABEL: "app-db"}},
        "spec": {
            "containers": [{"name": "app", "image": "app:1",
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "app-data"}}],
        },
    }


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[list[Pod]]:
    made: list[Pod] = []
    yield made
    for pod in made:
        pod.kill_all()


def _schedule(pods: list[Pod], manifest: dict[str, Any], replica: dict[str, Any], root: Path, disk: Path) -> Pod:
    configmaps = {specs.configmap_name(replica["metadata"]["name"]): {
        agent_config.CONFIG_FILE: agent_config.render(replica["spec"])}}
    root.mkdir(parents=True)
    pod = Pod(manifest, root, {"app-data": disk}, configmaps, SECRETS)
    pods.append(pod)
    return pod


@pytest.mark.parametrize("native_sidecar", [True, False], ids=["native-sidecar", "regular-container"])
def test_pod_dies_and_a_new_pod_on_an_empty_volume_gets_every_committed_row(
    moto_bucket: str, tmp_path: Path, pods: list[Pod], native_sidecar: bool
) -> None:
    prefix = f"pod-flow/{uuid.uuid4().hex}"
    replica = make_replica(prefix, _free_port())
    manifest = injection.inject(make_pod(), replica, native_sidecar=native_sidecar)
    init_names = [c["name"] for c in manifest["spec"]["initContainers"]]
    assert init_names[0] == injection.RESTORE_CONTAINER
    restore_spec = manifest["spec"]["initContainers"][0]
    assert {"-if-db-not-exists", "-if-replica-exists"} <= set(restore_spec["args"])
    assert restore_spec["envFrom"] == [{"secretRef": {"name": SECRET_NAME}}]
    # Nothing secret went into the ConfigMap.
    rendered = agent_config.render(replica["spec"])
    assert all(value not in rendered for value in SECRETS[SECRET_NAME].values())

    # -- first pod ever: empty volume, no replica yet ----------------------------------------------
    disk1 = tmp_path / "pvc-1"
    disk1.mkdir()
    pod1 = _schedule(pods, manifest, replica, tmp_path / "pod-1", disk1)
    app1 = pod1.container("app")
    db1 = app1.local(DATABASE)
    assert db1 == disk1 / "app.db"
    # Restore (no replica yet: -if-replica-exists), then the native sidecar, up and probed before the
    # app starts although the app has not created its database yet.
    done = pod1.start_init()
    assert done[injection.RESTORE_CONTAINER].returncode == 0
    assert not db1.exists(), "the restore of a replica that does not exist created a database"
    assert not _s3_keys(prefix)
    pod1.start_containers()
    create_db(db1)  # the app's first start creates its database
    writer = start_writer(db1, 0, 100_000, rows=10, pause=0.02)
    try:
        # The sidecar replicates while the app writes: wait for some of it in the bucket.
        wait_for(lambda: len(_s3_keys(prefix)) >= 5, 60, what="LTX files in the bucket")
        assert writer.poll() is None, writer.stderr.read() if writer.stderr else ""
    finally:
        assert pod1.terminate(writer) == 0, pod1.log(injection.AGENT_CONTAINER)
    committed = rows(db1)
    assert len({r[1] for r in committed}) >= 5, "the app barely wrote: the test proves nothing"

    # -- the node is gone: a new pod on a new, empty volume -----------------------------------------
    disk2 = tmp_path / "pvc-2"
    disk2.mkdir()
    pod2 = _schedule(pods, manifest, replica, tmp_path / "pod-2", disk2)
    db2 = pod2.container("app").local(DATABASE)
    done = pod2.start_init()
    restore = done[injection.RESTORE_CONTAINER]
    assert db2.exists(), f"restore init container did not restore: {restore.stderr}"
    assert integrity(db2) == "ok"
    # Every row the app committed before it was killed: the sidecar's final sync caught the tail.
    assert rows(db2) == committed
    pod2.start_containers()
    # The app carries on where it stopped, replicated again.
    next_batch = max(r[1] for r in committed) + 1
    write_batch(db2, next_batch)
    assert pod2.terminate(None) == 0, pod2.log(injection.AGENT_CONTAINER)
    after_pod2 = rows(db2)
    assert len(after_pod2) == len(committed) + 20

    # -- the same pod restarts on its own volume: the restore is a no-op ----------------------------
    # A row written while no agent ran is in the local file only: a restore would lose it.
    write_batch(db2, next_batch + 1)
    local_only = rows(db2)
    before = (db2.read_bytes(), db2.stat().st_mtime_ns)
    pod3 = _schedule(pods, manifest, replica, tmp_path / "pod-3", disk2)
    done = pod3.start_init()
    assert "already exists" in done[injection.RESTORE_CONTAINER].stderr
    assert (db2.read_bytes(), db2.stat().st_mtime_ns) == before, "the restore touched an existing database"
    assert rows(db2) == local_only
    pod3.kill_all()


def test_first_start_restore_with_no_replica_is_a_no_op(moto_bucket: str, tmp_path: Path) -> None:
    """The restore init container alone, on the first start: exit 0, no database, nothing in the bucket."""
    prefix = f"pod-flow/{uuid.uuid4().hex}"
    replica = make_replica(prefix, _free_port())
    manifest = injection.inject(make_pod(), replica)
    disk = tmp_path / "pvc"
    disk.mkdir()
    pod = _schedule([], manifest, replica, tmp_path / "pod", disk)
    restore = pod.container(injection.RESTORE_CONTAINER)
    proc = subprocess.run(restore.argv, env=restore.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(disk.iterdir()) == []
    assert _s3_keys(prefix) == []
    # Without -if-replica-exists the same restore fails: the flag is what makes the first start work.
    args = [a for a in restore.argv if a != "-if-replica-exists"]
    failed = subprocess.run(args, env=restore.env, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1, failed.stderr

