"""Pods the webhook admits are pods the API server accepts and kwok runs.

Each pod goes through the real kube-apiserver with the operator's webhook in place: the API server
validates what the webhook returns (unique mount paths, propagation, quota, label values), and the
test reads the injected spec back from it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from k8s import S3_ENDPOINT, Cluster, Operator, wait_until
from lifeboat.operator import injection, names

NAMESPACE = "admit"
QUOTA_NAMESPACE = "admit-quota"
UID = {"runAsUser": 10001, "runAsGroup": 10001}


def replica(name: str, database: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    return {"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteReplica",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"database": database,
                     "replica": {"url": f"s3://backups/{namespace}/{name}", "endpoint": S3_ENDPOINT,
                                 "region": "us-east-1", "forcePathStyle": True}}}


def pod(name: str, *, replica_name: str = "db", mount: dict[str, Any] | None = None,
        namespace: str = NAMESPACE, **spec: Any) -> dict[str, Any]:
    """A pod of one app container holding its database on the volume "data" (an emptyDir)."""
    app = {"name": "app", "image": "app:1", "securityContext": dict(UID),
           "volumeMounts": [{"name": "data", "mountPath": "/data", **(mount or {})}]}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"lifeboat.dev/replica": replica_name}},
            "spec": {"containers": [app], "volumes": [{"name": "data", "emptyDir": {}}], **spec}}


def create(cluster: Cluster, obj: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``kubectl create`` the object: (the object as the API server stored it, kubectl's stderr)."""
    proc = cluster.kubectl("create", "-f", "-", "-o", "json", input=yaml.safe_dump(obj))
    return json.loads(proc.stdout), proc.stderr


def running(cluster: Cluster, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    """The pod once kwok reports it Running."""
    def check() -> dict[str, Any] | None:
        found = cluster.get("pod", name, namespace=namespace)
        return found if (found.get("status") or {}).get("phase") == "Running" else None
    return wait_until(check, 120, f"pod {namespace}/{name} Running")


def injected(found: dict[str, Any], name: str) -> dict[str, Any]:
    containers = found["spec"].get("initContainers", []) + found["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


@pytest.fixture(scope="module")
def admit(operator: Operator) -> Cluster:
    """A namespace with the SQLiteReplicas the pods name."""
    cluster = operator.cluster
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.apply(replica("db", "/data/app.db"), replica("tmpdb", "/tmp/app.db"))
    return cluster


def test_database_under_tmp_is_mounted_once(admit: Cluster) -> None:
    app = pod("tmp", replica_name="tmpdb", mount={"mountPath": "/tmp"})

    created, _ = create(admit, app)

    for name in (injection.RESTORE_CONTAINER, injection.AGENT_CONTAINER):
        mounts = injected(created, name)["volumeMounts"]
        assert [m["mountPath"] for m in mounts if m["mountPath"] == "/tmp"] == ["/tmp"]
        assert mounts[0]["name"] == "data"
    running(admit, "tmp")


def test_bidirectional_propagation_of_a_privileged_app(admit: Cluster) -> None:
    app = pod("bidirectional", mount={"mountPropagation": "Bidirectional"})
    app["spec"]["containers"][0]["securityContext"]["privileged"] = True

    created, _ = create(admit, app)

    agent = injected(created, injection.AGENT_CONTAINER)
    assert agent["volumeMounts"][0]["mountPropagation"] == "HostToContainer"
    assert not agent["securityContext"].get("privileged")
    running(admit, "bidirectional")


def test_subpathexpr_variables_reach_the_injected_containers(admit: Cluster) -> None:
    app = pod("subpathexpr", mount={"subPathExpr": "tenants/$(POD_NAME)"})
    env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}]
    app["spec"]["containers"][0]["env"] = env

    created, _ = create(admit, app)

    for name in (injection.RESTORE_CONTAINER, injection.AGENT_CONTAINER):
        container = injected(created, name)
        assert container["volumeMounts"][0]["subPathExpr"] == "tenants/$(POD_NAME)"
        assert container["env"] == env
    running(admit, "subpathexpr")


def test_restore_with_a_long_name_gets_a_job_that_runs(admit: Cluster) -> None:
    restore = "restore-the-database-of-the-app-to-its-state-before-the-bad-migration"
    assert len(restore) > 63
    admit.apply(
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{NAMESPACE}-scratch"},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                  "claimRef": {"namespace": NAMESPACE, "name": "scratch"},
                  "hostPath": {"path": f"/var/lib/{NAMESPACE}-scratch"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "scratch", "namespace": NAMESPACE},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                  "storageClassName": "", "volumeName": f"{NAMESPACE}-scratch"}},
        {"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteRestore",
         "metadata": {"name": restore, "namespace": NAMESPACE},
         "spec": {"replica": "db", "target": {"pvc": "scratch"}}})

    job = wait_until(lambda: (admit.get("sqliterestore", restore, namespace=NAMESPACE).get("status") or {})
                     .get("job"), 60, "the restore Job named in the status")

    assert len(job) <= 63
    label = admit.get("job", job, namespace=NAMESPACE)["metadata"]["labels"]["lifeboat.dev/restore"]
    assert label == names.bounded(restore) and len(label) <= 63

    def job_pod() -> list[dict[str, Any]]:
        pods = admit.get("pods", namespace=NAMESPACE, selector=f"job-name={job}")["items"]
        return [p for p in pods if p["status"].get("phase") == "Running"]
    wait_until(job_pod, 120, f"Job {job}'s pod Running")


def test_namespace_quota_on_limits_admits_the_injected_containers(admit: Cluster) -> None:
    admit.kubectl("create", "namespace", QUOTA_NAMESPACE)
    hard = {"requests.cpu": "8", "requests.memory": "8Gi", "limits.cpu": "8", "limits.memory": "8Gi"}
    quota = {"apiVersion": "v1", "kind": "ResourceQuota",
             "metadata": {"name": "limits", "namespace": QUOTA_NAMESPACE}, "spec": {"hard": hard}}
    admit.apply(replica("db", "/data/app.db", QUOTA_NAMESPACE), quota)
    # The quota admission plugin charges pods only once the controller-manager has filled the status.
    wait_until(lambda: (admit.get("resourcequota", "limits", namespace=QUOTA_NAMESPACE).get("status") or {})
               .get("hard"), 60, "the ResourceQuota's status")
    app = pod("quota", namespace=QUOTA_NAMESPACE)
    app["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "10m", "memory": "32Mi"},
                                                 "limits": {"cpu": "100m", "memory": "128Mi"}}

    created, _ = create(admit, app)

    for name in (injection.RESTORE_CONTAINER, injection.AGENT_CONTAINER):
        assert set(injected(created, name)["resources"]["limits"]) == {"cpu", "memory"}
    running(admit, "quota", QUOTA_NAMESPACE)


def test_app_without_a_uid_is_admitted_with_a_warning(admit: Cluster) -> None:
    app = pod("image-uid")
    del app["spec"]["containers"][0]["securityContext"]

    created, stderr = create(admit, app)

    assert "Warning: SQLiteReplica db: container 'app' and its pod set no securityContext.runAsUser" in stderr
    assert injected(created, injection.AGENT_CONTAINER)["securityContext"]["runAsUser"] == injection.DEFAULT_UID
    running(admit, "image-uid")

    _, quiet = create(admit, pod("named-uid"))
    assert "Warning" not in quiet
    assert injected(running(admit, "named-uid"), injection.AGENT_CONTAINER)["securityContext"]["runAsUser"] == 10001


def test_denials_are_bad_requests_with_the_reason(admit: Cluster) -> None:
    # -v=6 logs each response's HTTP status: the API server passes the webhook's code on to the client.
    proc = admit.kubectl("create", "-v=6", "-f", "-", input=yaml.safe_dump(pod("orphan", replica_name="missing")),
                         check=False)

    assert proc.returncode != 0
    (status,) = re.findall(r'verb="POST" url="[^"]*/pods\?[^"]*" status="([^"]*)"', proc.stderr)
    assert status == "400 Bad Request", proc.stderr
    assert "pod label lifeboat.dev/replica=missing names no SQLiteReplica in namespace admit" in proc.stderr


def test_native_sidecar_proxy_starts_before_the_restore(admit: Cluster) -> None:
    app = pod("mesh", initContainers=[
        {"name": "istio-init", "image": "proxyv2"},
        {"name": "istio-proxy", "image": "proxyv2", "restartPolicy": "Always"},
    ])
    app["metadata"]["annotations"] = {"traffic.sidecar.istio.io/excludeInboundPorts": "15020"}

    created, _ = create(admit, app)

    assert [c["name"] for c in created["spec"]["initContainers"]] == [
        "istio-init", "istio-proxy", injection.RESTORE_CONTAINER, injection.AGENT_CONTAINER]
    annotations = created["metadata"]["annotations"]
    assert annotations["traffic.sidecar.istio.io/excludeInboundPorts"] == "15020,9090"
    assert annotations["config.linkerd.io/skip-inbound-ports"] == "9090"
    running(admit, "mesh")
