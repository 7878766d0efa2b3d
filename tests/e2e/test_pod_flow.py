"""Issue #6, end to end as processes: the pod the operator's webhook produces, run the way the kubelet runs it.

A SQLiteReplica for an S3 replica on moto (127.0.0.1:18001, path-style, credentials from a Secret) and
an app pod go through `injection.inject()`. Each injected container then runs as a local process, with
exactly the command, args and env the mutated pod gives it:

* env: `value`, `valueFrom.secretKeyRef` and `envFrom.secretRef` resolved against a dict standing for
  the Secret (and nothing from the test's own environment: no ambient AWS credentials);
* volumes: every volume gets a local directory (a PVC a directory that outlives the pod, an emptyDir a
  fresh one, a ConfigMap a directory holding the config `agent_config.render()` produced), and every
  path under a container's mount is rewritten to that directory, in args, env and mounted files alike;
* order: init containers one after another, the native sidecar (`restartPolicy: Always`) started and
  its `startupProbe` awaited before the next, then the app; on termination the app is SIGKILLed and the
  sidecar gets SIGTERM, its final sync.
"""

from __future__ import annotations

import os
import posixpath
import signal
import socket
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import LIFEBOAT, create_db, integrity, rows, start_writer, wait_for, write_batch
from lifeboat.operator import agent_config, injection
from lifeboat.operator import spec as specs

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


# ---- the kubelet, as far as this test needs one ---------------------------------------------------


@dataclass
class Container:
    """One container of the pod, mapped onto this machine."""

    name: str
    argv: list[str]
    env: dict[str, str]
    mounts: dict[str, Path]  # mountPath in the container → local directory

    def local(self, path: str) -> Path:
        """Where a path the container sees lives here (the longest mount prefix wins)."""
        best = max((m for m in self.mounts if path == m or path.startswith(m.rstrip("/") + "/")), key=len)
        return self.mounts[best] / posixpath.relpath(path, best)


def _rewrite(value: Any, mounts: Mapping[str, Path]) -> Any:
    """Every string naming a path under a mount, rewritten to the local directory (recursively)."""
    if isinstance(value, dict):
        return {k: _rewrite(v, mounts) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, mounts) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        for mount in sorted(mounts, key=len, reverse=True):
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                return str(mounts[mount] / posixpath.relpath(value, mount))
    return value


def _env(container: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str]], home: Path) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    for source in container.get("envFrom") or []:
        ref = source["secretRef"]  # the only kind injection emits
        env.update({source.get("prefix", "") + k: v for k, v in secrets[ref["name"]].items()})
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
    return env


@dataclass
class Pod:
    """A scheduled copy of the injected pod: its volumes as local directories."""

    manifest: dict[str, Any]
    root: Path
    claims: Mapping[str, Path]  # PVC claimName → local directory (the disk outlives the pod)
    configmaps: Mapping[str, Mapping[str, str]]
    secrets: Mapping[str, Mapping[str, str]]
    volumes: dict[str, Path] = field(default_factory=dict)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for volume in self.manifest["spec"].get("volumes") or []:
            name = volume["name"]
            if "persistentVolumeClaim" in volume:
                self.volumes[name] = self.claims[volume["persistentVolumeClaim"]["claimName"]]
            elif "emptyDir" in volume:
                self.volumes[name] = self.root / "emptydir" / name
                self.volumes[name].mkdir(parents=True)
            elif "configMap" in volume:
                self.volumes[name] = self.root / "configmap" / name  # filled per container (paths rewritten)
            else:
                raise AssertionError(f"volume kind the test does not emulate: {volume}")

    def _container(self, spec: Mapping[str, Any]) -> Container:
        mounts: dict[str, Path] = {}
        cm_volumes = {v["name"]: v["configMap"]["name"] for v in self.manifest["spec"]["volumes"] if "configMap" in v}
        for mount in spec.get("volumeMounts") or []:
            local = self.volumes[mount["name"]] / mount.get("subPath", "")
            mounts[mount["mountPath"]] = local
        for mount in spec.get("volumeMounts") or []:
            if mount["name"] in cm_volumes:  # each container sees the ConfigMap's keys as files
                local = self.root / "configmap" / spec["name"] / mount["name"]
                local.mkdir(parents=True)
                mounts[mount["mountPath"]] = local
                for key, text in self.configmaps[cm_volumes[mount["name"]]].items():
                    (local / key).write_text(yaml.safe_dump(_rewrite(yaml.safe_load(text), mounts)))
        argv: list[str] = []
        if spec.get("command"):  # ours; the app container is the test's own writer process
            assert spec["command"] == ["lifeboat"], spec["command"]
            argv = [*LIFEBOAT, *_rewrite(list(spec.get("args") or []), mounts)]
        env = _rewrite(_env(spec, self.secrets, self.root), mounts)
        if "/tmp" in mounts:
            env["TMPDIR"] = str(mounts["/tmp"])
        return Container(spec["name"], argv, env, mounts)

    def container(self, name: str) -> Container:
        for spec in self.manifest["spec"].get("initContainers", []) + self.manifest["spec"]["containers"]:
            if spec["name"] == name:
                return self._container(spec)
        raise AssertionError(f"no container {name}")

    def start_init(self) -> dict[str, subprocess.CompletedProcess[str]]:
        """Run the init containers in order, as the kubelet does; a native sidecar keeps running."""
        done: dict[str, subprocess.CompletedProcess[str]] = {}
        for spec in self.manifest["spec"].get("initContainers", []):
            c = self._container(spec)
            if spec.get("restartPolicy") == "Always":
                self._start_sidecar(c, spec)
                continue
            proc = subprocess.run(c.argv, env=c.env, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, f"init container {c.name} exited {proc.returncode}: {proc.stderr}"
            done[c.name] = proc
        return done

    def start_containers(self) -> None:
        """The regular containers: ours (the agent, without native sidecars) start beside the app's."""
        for spec in self.manifest["spec"]["containers"]:
            if spec.get("command"):
                self._start_sidecar(self._container(spec), spec)

    def _start_sidecar(self, c: Container, spec: Mapping[str, Any]) -> None:
        log = open(self.root / f"{c.name}.log", "w")  # the child keeps its own copy
        proc = subprocess.Popen(c.argv, env=c.env, stdout=log, stderr=subprocess.STDOUT, text=True)
        log.close()
        self.procs.append(proc)
        probe = spec["startupProbe"]
        port = {p["name"]: p["containerPort"] for p in spec["ports"]}[probe["httpGet"]["port"]]
        url = f"http://127.0.0.1:{port}{probe['httpGet']['path']}"

        def started() -> bool:
            assert proc.poll() is None, f"{c.name} exited {proc.returncode}: {self.log(c.name)}"
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_for(started, probe["periodSeconds"] * probe["failureThreshold"], what=f"{c.name} startupProbe")

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def terminate(self, app: subprocess.Popen[str] | None) -> int:
        """The pod goes: the app is killed outright, then the sidecar gets SIGTERM (its final sync)."""
        if app is not None and app.poll() is None:
            app.send_signal(signal.SIGKILL)
            app.wait()
        (agent,) = self.procs
        agent.send_signal(signal.SIGTERM)
        try:
            return agent.wait(timeout=60)
        finally:
            if agent.poll() is None:
                agent.kill()

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


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

