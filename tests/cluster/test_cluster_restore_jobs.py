"""In-place SQLiteRestores on the real API: where the restore Job runs, and an app kept stopped meanwhile.

Each test has its own SQLiteReplica and app (a Deployment or StatefulSet whose pods carry its label, on a
pre-bound ReadWriteOnce PV). No restore container runs here: kwok ends the Job's pod with the exit code
and termination message the test annotates (.ci/kwok-stages.yaml), or the pod is left running to see
what the operator does around it. The Job controller, the garbage collector, the StatefulSet's PVC
retention and the mutating webhook are the real ones.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from inplace import bound_claim
from k8s import S3_ENDPOINT, Cluster, Operator, wait_until

NAMESPACE = "restore-jobs"
NODE = "kwok-node-0"  # .ci/cluster.sh's one node
RESULT = json.dumps({"db_path": "/data/app.db", "txid": "0000000000000002", "duration_ms": 1,
                     "integrity_check": "none"})


@pytest.fixture(scope="module")
def kube(operator: Operator) -> Cluster:
    """The cluster, with the operator running and this module's namespace."""
    operator.cluster.kubectl("create", "namespace", NAMESPACE)
    return operator.cluster


def replica(name: str) -> dict[str, Any]:
    return {"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteReplica",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"database": "/data/app.db", "replica": {"url": f"s3://backups/{NAMESPACE}/{name}",
                                                             "endpoint": S3_ENDPOINT, "forcePathStyle": True}}}


def deployment(name: str, volume: dict[str, Any] | None = None, **pod: Any) -> dict[str, Any]:
    """A Deployment of one pod labelled for SQLiteReplica ``name``, its database on ``volume`` (PVC ``name``)."""
    labels = {"app": name, "lifeboat.dev/replica": name}
    volume = volume or {"persistentVolumeClaim": {"claimName": name}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": labels}, "spec": {
                         "containers": [{"name": "app", "image": "app:1",
                                         "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                         "volumes": [{"name": "data", **volume}], **pod}}}}


def live_pods(cluster: Cluster, selector: str) -> list[dict[str, Any]]:
    """Pods whose containers may still run (terminating ones included)."""
    return [p for p in cluster.get("pods", namespace=NAMESPACE, selector=selector)["items"]
            if p["status"].get("phase") not in ("Succeeded", "Failed")]


def running(cluster: Cluster, selector: str) -> list[dict[str, Any]]:
    return [p for p in live_pods(cluster, selector)
            if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]]


def start_app(cluster: Cluster, *objects: dict[str, Any]) -> dict[str, Any]:
    """Apply the objects; the app's one pod, Running."""
    cluster.apply(*objects)
    name = next(o for o in objects if o["kind"] in ("Deployment", "StatefulSet"))["metadata"]["name"]
    (pod,) = wait_until(lambda: running(cluster, f"app={name}"), 120, f"{name}'s pod Running")
    return pod


def restore(cluster: Cluster, name: str, **spec: Any) -> None:
    cluster.apply({"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteRestore",
                   "metadata": {"name": name, "namespace": NAMESPACE},
                   "spec": {"replica": name, "target": "inPlace", **spec}})


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.get("sqliterestore", name, namespace=NAMESPACE).get("status") or {}


def finished(cluster: Cluster, name: str) -> dict[str, Any] | None:
    found = status(cluster, name)
    return found if found.get("phase") in ("Succeeded", "Failed") else None


def job_pod(cluster: Cluster, name: str) -> dict[str, Any]:
    """The restore Job's pod, Running (scheduled and started by kwok)."""
    job = wait_until(lambda: status(cluster, name).get("job"), 120, f"{name}'s restore Job")
    (pod,) = wait_until(lambda: running(cluster, f"job-name={job}"), 120, f"Job {job}'s pod Running")
    return pod


def replicas(cluster: Cluster, kind: str, name: str) -> int:
    return int(cluster.get(kind, name, namespace=NAMESPACE)["spec"]["replicas"])


def condition(found: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in found.get("conditions") or [] if c["type"] == type_), {})


def test_the_job_runs_with_the_apps_identity_and_scheduling_on_its_node(kube: Cluster) -> None:
    name = "placed"
    kube.apply({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                   "metadata": {"name": "restore-jobs-critical"}, "value": 1000})
    pod_fields = {
        "serviceAccountName": "app-identity",
        "imagePullSecrets": [{"name": "registry"}],
        "nodeSelector": {"type": "kwok"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}},
        "priorityClassName": "restore-jobs-critical",
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
    }
    app = start_app(kube, {"apiVersion": "v1", "kind": "ServiceAccount",
                              "metadata": {"name": "app-identity", "namespace": NAMESPACE}},
                    replica(name), *bound_claim(NAMESPACE, name), deployment(name, **pod_fields))
    assert app["spec"]["nodeName"] == NODE

    restore(kube, name, restoreTimeoutSeconds=900)
    pod = job_pod(kube, name)
    job = kube.get("job", status(kube, name)["job"], namespace=NAMESPACE)
    spec = job["spec"]["template"]["spec"]
    for key in ("serviceAccountName", "imagePullSecrets", "nodeSelector", "tolerations", "priorityClassName",
                "securityContext"):
        assert spec[key] == pod_fields[key], key
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == pod_fields["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"]
    assert term["matchFields"] == [{"key": "metadata.name", "operator": "In", "values": [NODE]}]
    assert pod["spec"]["nodeName"] == NODE
    assert job["spec"]["activeDeadlineSeconds"] == 900
    (container,) = spec["containers"]
    assert (container["securityContext"]["runAsUser"], container["securityContext"]["runAsGroup"]) == (1000, 1000)

    kube.kubectl("annotate", "pod", pod["metadata"]["name"], "-n", NAMESPACE,
                 f"kwok.lifeboat.dev/message={RESULT}", "kwok.lifeboat.dev/exit-code=0")
    done = wait_until(lambda: finished(kube, name), 120, "the restore to finish")
    assert done["phase"] == "Succeeded", done
    assert replicas(kube, "deployment", name) == 1


def test_a_restore_past_its_timeout_stops_the_job_then_scales_back(kube: Cluster) -> None:
    name = "slow"
    start_app(kube, replica(name), *bound_claim(NAMESPACE, name), deployment(name))
    restore(kube, name, restoreTimeoutSeconds=10)
    # The Job's pod is left to run: nothing ends the restore but its timeout.
    wait_until(lambda: status(kube, name).get("job"), 120, "the restore Job")

    done = wait_until(lambda: finished(kube, name), 120, "the restore to give up")
    assert done["phase"] == "Failed", done
    assert "restore" in done["error"] and ("restoreTimeoutSeconds" in done["error"] or "Deadline" in done["error"])
    assert replicas(kube, "deployment", name) == 1
    assert not live_pods(kube, f"job-name={done['job']}"), "scaled back while the Job's pod still ran"
    wait_until(lambda: running(kube, f"app={name}"), 120, "the app running again")


def test_no_app_pod_starts_while_restoring_and_a_scale_up_stops_the_restore(kube: Cluster) -> None:
    name = "guarded"
    start_app(kube, replica(name), *bound_claim(NAMESPACE, name), deployment(name))
    restore(kube, name)
    job = job_pod(kube, name)["metadata"]["labels"]["job-name"]

    stray = {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "stray", "namespace": NAMESPACE, "labels": {"lifeboat.dev/replica": name}},
             "spec": {"containers": [{"name": "app", "image": "app:1",
                                      "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                      "volumes": [{"name": "data", "emptyDir": {}}]}}  # a pod the webhook would inject
    # -v=6 logs the Status the API server answered with.
    refused = kube.kubectl("create", "-f", "-", "-v=6", input=json.dumps(stray), check=False)
    assert refused.returncode != 0, "a pod of the replica was admitted during its in-place restore"
    assert "\"code\": 403" in refused.stderr and f"SQLiteRestore {name} is restoring" in refused.stderr, \
        refused.stderr

    # As GitOps self-heal or an autoscaler would: the restore stops rather than race the app.
    kube.kubectl("scale", "deployment", name, "-n", NAMESPACE, "--replicas=1")
    done = wait_until(lambda: finished(kube, name), 120, "the restore to stop")
    assert done["phase"] == "Failed", done
    assert f"Deployment {name} was scaled to 1 while restoring" in done["error"]
    assert not kube.exists("job", job, NAMESPACE)
    wait_until(lambda: running(kube, f"app={name}"), 120, "the app running again")


def test_deleting_a_restore_stops_its_job_and_scales_back_once_its_pod_is_gone(kube: Cluster) -> None:
    name = "deleted"
    start_app(kube, replica(name), *bound_claim(NAMESPACE, name), deployment(name))
    restore(kube, name)
    pod = job_pod(kube, name)["metadata"]["name"]
    job = status(kube, name)["job"]
    # The pod cannot go away before the test lets it: as a kubelet still stopping its container.
    hold = '{"metadata": {"finalizers": ["restore-jobs.lifeboat.dev/hold"]}}'
    kube.kubectl("patch", "pod", pod, "-n", NAMESPACE, "--type=merge", "-p", hold)

    kube.kubectl("delete", "sqliterestore", name, "-n", NAMESPACE, "--wait=false")
    wait_until(lambda: not kube.exists("job", job, NAMESPACE), 60, "the restore Job deleted")
    wait_until(lambda: "deletionTimestamp" in kube.get("pod", pod, namespace=NAMESPACE)["metadata"], 60,
               "the Job's pod terminating")
    assert kube.exists("sqliterestore", name, NAMESPACE), "the restore went before its Job's pod"
    assert replicas(kube, "deployment", name) == 0, "scaled back while the Job's pod still ran"

    kube.kubectl("patch", "pod", pod, "-n", NAMESPACE, "--type=merge", "-p", '{"metadata": {"finalizers": null}}')
    wait_until(lambda: not kube.exists("sqliterestore", name, NAMESPACE), 60, "the restore gone")
    assert replicas(kube, "deployment", name) == 1
    wait_until(lambda: running(kube, f"app={name}"), 120, "the app running again")


def test_an_in_place_restore_onto_a_scratch_volume_is_refused(kube: Cluster) -> None:
    name = "scratch"
    start_app(kube, replica(name), deployment(name, {"emptyDir": {}}))
    restore(kube, name)

    done = wait_until(lambda: finished(kube, name), 60, "the restore refused")
    assert done["phase"] == "Failed", done
    verdict = condition(done, "WorkloadIdentified")
    assert (verdict["status"], verdict["reason"]) == ("False", "VolumeNotPersistent")
    assert "emptyDir" in verdict["message"] and "target: {pvc: NAME}" in verdict["message"]
    assert replicas(kube, "deployment", name) == 1 and running(kube, f"app={name}")
    assert "job" not in done


def test_a_statefulset_that_deletes_its_claim_when_scaled_is_warned_about(kube: Cluster) -> None:
    name = "shrinks"
    labels = {"app": name, "lifeboat.dev/replica": name}
    statefulset = {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"replicas": 1, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                 "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Delete"},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                     {"name": "app", "image": "app:1", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                     "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                     "storageClassName": "", "volumeName": f"{NAMESPACE}-data-{name}-0"}}]}}
    (volume, _) = bound_claim(NAMESPACE, f"data-{name}-0")
    start_app(kube, replica(name), volume, statefulset)
    restore(kube, name, restoreTimeoutSeconds=5)

    def warned() -> dict[str, Any] | None:
        found = condition(status(kube, name), "VolumeRetained")
        return found if found.get("status") == "False" else None

    verdict = wait_until(warned, 60, "VolumeRetained=False")
    assert verdict["reason"] == "DeletedWhenScaled"
    assert "whenScaled: Delete" in verdict["message"] and f"data-{name}-0" in verdict["message"]
    reasons = [e["reason"] for e in kube.get("events", namespace=NAMESPACE)["items"]
               if e["involvedObject"]["name"] == name and e["involvedObject"]["kind"] == "SQLiteRestore"]
    assert "DeletedWhenScaled" in reasons
    wait_until(lambda: finished(kube, name), 120, "the restore to end")
    assert replicas(kube, "statefulset", name) == 1
