"""An app to restore in place, for tests of the operator's restore control flow on the real API.

The app is a one-replica Deployment whose pods carry the replica label (so they are injected) and keep
the database on a PersistentVolumeClaim (in-place restores refuse scratch volumes): nothing runs for
real, kwok fakes the pods. The restore Job's pod is ended
by kwok with a made-up ``lifeboat restore -json`` result, which is all the operator reads of it.
"""

from __future__ import annotations

import json
from typing import Any

from k8s import Cluster, wait_until

APP = "app"
REPLICA = "db"
RESULT = {"txid": "0000000000000001", "integrity_check": "none", "duration_ms": 1}


def bound_claim(namespace: str, name: str) -> list[dict[str, Any]]:
    """A ReadWriteOnce PV already bound to the claim of that name, and the claim (the scheduler waits
    for bound claims, and no provisioner runs on the test plane)."""
    volume = f"{namespace}-{name}"
    return [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                  "claimRef": {"namespace": namespace, "name": name}, "hostPath": {"path": f"/var/lib/{volume}"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": namespace},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                  "storageClassName": "", "volumeName": volume}},
    ]


def manifests(namespace: str) -> list[dict[str, Any]]:
    """The SQLiteReplica, the database's claim and the Deployment labelled with the replica."""
    labels = {"app": APP, "lifeboat.dev/replica": REPLICA}
    return [
        *bound_claim(namespace, "data"),
        {"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteReplica",
         "metadata": {"name": REPLICA, "namespace": namespace},
         "spec": {"database": "/data/app.db", "replica": {"url": f"s3://backups/{namespace}/{REPLICA}"}}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": APP, "namespace": namespace},
         "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": {"app": APP}},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "containers": [{"name": "app", "image": "app:1",
                                      "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                      "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}}}},
    ]


def running_pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    return [p for p in cluster.get("pods", namespace=namespace, selector=selector)["items"]
            if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]]


def deploy(cluster: Cluster, namespace: str) -> None:
    """The replica and the app, its pod Running."""
    cluster.apply(*manifests(namespace))
    wait_until(lambda: running_pods(cluster, namespace, f"app={APP}"), 90, "the app's pod Running")


def start_restore(cluster: Cluster, namespace: str, name: str) -> None:
    cluster.apply({"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteRestore",
                   "metadata": {"name": name, "namespace": namespace},
                   "spec": {"replica": REPLICA, "target": "inPlace"}})


def status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return cluster.get("sqliterestore", name, namespace=namespace).get("status") or {}


def jobs(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    """The restore's Jobs (by their label: one, if nothing made it twice)."""
    return cluster.get("jobs", namespace=namespace, selector=f"lifeboat.dev/restore={name}")["items"]


def replicas(cluster: Cluster, namespace: str) -> int:
    return int(cluster.get("deployment", APP, namespace=namespace)["spec"]["replicas"])


def end_job(cluster: Cluster, namespace: str, job: str) -> None:
    """kwok ends the Job's pod as a successful restore (.ci/kwok-stages.yaml)."""
    (pod,) = wait_until(lambda: running_pods(cluster, namespace, f"job-name={job}"), 90, f"Job {job}'s pod Running")
    cluster.kubectl("annotate", "pod", pod["metadata"]["name"], "-n", namespace,
                    f"kwok.lifeboat.dev/message={json.dumps(RESULT)}", "kwok.lifeboat.dev/exit-code=0")


def finished(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """The restore's status once it is Succeeded or Failed."""
    def done() -> dict[str, Any] | None:
        found = status(cluster, namespace, name)
        return found if found.get("phase") in ("Succeeded", "Failed") else None

    result: dict[str, Any] = wait_until(done, 120, f"restore {name} to finish")
    return result
