"""SQLiteRestore: kopf against kmock, the test playing the controllers and the kubelet (it deletes the
pods after the scale-down, and finishes the Job with a termination message). Plus the pure parts."""

import json
from typing import Any

import kmock
import pytest
from kube_helpers import NAMESPACE, create, eventually, free_port, make_replica, running_operator
from lifeboat.operator import handlers, restores, webhook
from workloads import (
    JOBS,
    PODS,
    REPLICAS,
    RESTORES,
    condition,
    delete,
    deployment_with_pod,
    events,
    name_generated_objects,
    patch,
    stored,
)

RESTORE = "lifeboat.dev/v1alpha1/sqliterestores"
RESULT = {"db_path": "/data/app.db", "replica": "s3://backups/app", "txid": "000000000000002a",
          "duration_ms": 120, "integrity_check": "ok"}


@pytest.fixture(autouse=True)
def named_events(k8s: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    name_generated_objects(k8s, monkeypatch)


def options(tmp_path: Any) -> handlers.Options:
    return handlers.Options(namespaces=(NAMESPACE,), webhook_addr="127.0.0.1", webhook_port=free_port(),
                            tls_dir=tmp_path / "tls", agent_image="lifeboat:test")


def make_restore(name: str = "r1", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteRestore",
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": {"replica": "db", **spec}}


def restore(k8s: kmock.KubernetesEmulator, name: str = "r1") -> dict[str, Any]:
    return stored(k8s, RESTORE, name) or {}


def phase_is(k8s: kmock.KubernetesEmulator, phase: str, name: str = "r1") -> Any:
    return lambda: (obj := restore(k8s, name)).get("status", {}).get("phase") == phase and obj


async def finish_job(k8s: kmock.KubernetesEmulator, name: str, *, succeeded: bool, message: str) -> None:
    """What the Job controller and the kubelet would do: a pod that terminated, the Job's status."""
    await create(k8s, PODS, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{name}-x1", "namespace": NAMESPACE, "labels": {"job-name": name}},
        "spec": {"containers": [{"name": "lifeboat-restore", "image": "lifeboat:test"}]},
        "status": {"phase": "Succeeded" if succeeded else "Failed", "containerStatuses": [{
            "name": "lifeboat-restore", "state": {"terminated": {
                "exitCode": 0 if succeeded else 1, "message": message, "finishedAt": "2026-01-01T00:00:00Z"}}}]},
    })
    kind = "Complete" if succeeded else "Failed"
    await patch(k8s, f"{JOBS}/{name}/status", {"status": {
        "succeeded" if succeeded else "failed": 1, "conditions": [{"type": kind, "status": "True"}]}})


async def test_in_place_restore_walks_the_steps_and_resumes_after_a_restart(
    k8s: kmock.KubernetesEmulator, kubeconfig: None, tls: webhook.TLSBundle, tmp_path: Any
) -> None:
    (pod,) = await deployment_with_pod(k8s)
    await create(k8s, REPLICAS, make_replica())
    await create(k8s, RESTORES, make_restore(timestamp="2026-01-01T00:00:00Z", verify=True))

    async with running_operator(options(tmp_path)):
        scaling = await eventually(phase_is(k8s, "ScalingDown"))
        assert scaling["status"]["workload"] == {"kind": "Deployment", "name": "app", "replicas": 1}
        assert condition(scaling, "WorkloadIdentified")["status"] == "True"
        # Scaled to 0 through the scale subresource; the pod is still there (no kubelet yet).
        await eventually(lambda: stored(k8s, "apps/v1/deployments", "app")["spec"]["replicas"] == 0)
        waiting = await eventually(lambda: "waiting for pod" in restore(k8s)["status"].get("message", "")
                                   and restore(k8s))
        assert pod in waiting["status"]["message"] and waiting["status"]["phase"] == "ScalingDown"
    # The operator is gone mid-restore. Meanwhile the pod terminates.
    await delete(k8s, f"{PODS}/{pod}")

    async with running_operator(options(tmp_path)):
        restoring = await eventually(lambda: (r := restore(k8s)).get("status", {}).get("job") and r)
        assert restoring["status"]["phase"] == "Restoring"
        assert restoring["status"]["workload"]["replicas"] == 1  # the recorded count survived the restart
        job = stored(k8s, "batch/v1/jobs", "r1-restore")
        assert job is not None
        assert job["metadata"]["ownerReferences"][0]["kind"] == "SQLiteRestore"
        pod_spec = job["spec"]["template"]["spec"]
        (container,) = pod_spec["containers"]
        assert container["args"] == ["restore", "-force", "-json", "-integrity-check", "full",
                                     "-timestamp", "2026-01-01T00:00:00Z", "-config", "/etc/lifeboat/lifeboat.yml",
                                     "/data/app.db"]
        assert container["image"] == "lifeboat:test"
        assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
        assert {"name": "lifeboat-data", "mountPath": "/data"} in container["volumeMounts"]
        assert {"name": "lifeboat-data", "persistentVolumeClaim": {"claimName": "app-data"}} in pod_spec["volumes"]
        assert {"name": "lifeboat-config", "configMap": {"name": "db-lifeboat"}} in pod_spec["volumes"]
        assert container["securityContext"]["runAsUser"] == 10001
        assert pod_spec["securityContext"] == {"fsGroup": 10001}
        assert "lifeboat.dev/replica" not in job["spec"]["template"]["metadata"]["labels"]  # never injected
        assert stored(k8s, "apps/v1/deployments", "app")["spec"]["replicas"] == 0

        await finish_job(k8s, "r1-restore", succeeded=True, message=json.dumps(RESULT) + "\n")
        done = await eventually(phase_is(k8s, "Succeeded"))
    assert stored(k8s, "apps/v1/deployments", "app")["spec"]["replicas"] == 1
    assert done["status"]["result"] == {"txid": "000000000000002a", "integrityCheck": "ok",
                                        "timestamp": "2026-01-01T00:00:00Z", "durationMs": 120}
    for type_ in ("Restored", "Verified", "Complete"):
        assert condition(done, type_)["status"] == "True", type_
    assert done["status"]["completionTime"]
    reasons = [e["reason"] for e in events(k8s, "r1")]
    for reason in ("ScalingDown", "Restoring", "JobCreated", "Restored", "Succeeded"):
        assert reason in reasons


async def test_failed_pvc_restore_reports_the_jobs_message(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options
) -> None:
    await deployment_with_pod(k8s)
    await create(k8s, REPLICAS, make_replica())
    await create(k8s, RESTORES, make_restore(target={"pvc": "scratch"}, txid="0000000000000010"))

    job = await eventually(lambda: stored(k8s, "batch/v1/jobs", "r1-restore"))
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert ["-integrity-check", "none"] == container["args"][3:5]

    await finish_job(k8s, "r1-restore", succeeded=False, message="error: no matching backup files available\n")
    failed = await eventually(phase_is(k8s, "Failed"))
    assert "no matching backup files" in failed["status"]["message"]
    assert condition(failed, "Restored")["status"] == "False"
    assert stored(k8s, "apps/v1/deployments", "app")["spec"]["replicas"] == 1
    assert "workload" not in failed["status"]


async def test_in_place_restore_is_refused_when_the_workload_cannot_be_identified(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options
) -> None:
    await create(k8s, REPLICAS, make_replica())
    await create(k8s, RESTORES, make_restore(target="inPlace"))

    failed = await eventually(phase_is(k8s, "Failed"))
    cond = condition(failed, "WorkloadIdentified")
    assert (cond["status"], cond["reason"]) == ("False", "WorkloadNotFound")
    assert "lifeboat.dev/replica=db" in cond["message"] and "pvc" in cond["message"]
    assert stored(k8s, "batch/v1/jobs", "r1-restore") is None


async def test_failed_in_place_restore_still_scales_the_app_back(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options
) -> None:
    (pod,) = await deployment_with_pod(k8s, replicas=1)
    await create(k8s, REPLICAS, make_replica())
    await create(k8s, RESTORES, make_restore(target="inPlace"))
    await eventually(lambda: stored(k8s, "apps/v1/deployments", "app")["spec"]["replicas"] == 0)
    await delete(k8s, f"{PODS}/{pod}")
    await eventually(lambda: stored(k8s, "batch/v1/jobs", "r1-restore"))
    await finish_job(k8s, "r1-restore", succeeded=False, message="error: s3: 403 Forbidden\n")

    failed = await eventually(phase_is(k8s, "Failed"))
    assert "403 Forbidden" in failed["status"]["message"]
    assert stored(k8s, "apps/v1/deployments", "app")["spec"]["replicas"] == 1


async def test_pods_that_never_stop_fail_the_restore_and_the_app_comes_back(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options
) -> None:
    (pod,) = await deployment_with_pod(k8s, replicas=1)
    await create(k8s, REPLICAS, make_replica())
    await create(k8s, RESTORES, make_restore(target="inPlace", stopTimeoutSeconds=1))
    await eventually(lambda: stored(k8s, "apps/v1/deployments", "app")["spec"]["replicas"] == 0)
    # No kubelet here: the pod is never deleted, as with a finalizer or an unreachable node.

    failed = await eventually(phase_is(k8s, "Failed"))
    assert pod in failed["status"]["message"] and "1 s after scaling to 0" in failed["status"]["message"]
    assert (condition(failed, "Restored")["status"], condition(failed, "Restored")["reason"]) == (
        "False", "PodsDidNotStop")
    assert stored(k8s, "apps/v1/deployments", "app")["spec"]["replicas"] == 1
    assert stored(k8s, "batch/v1/jobs", "r1-restore") is None
    assert "PodsDidNotStop" in [e["reason"] for e in events(k8s, "r1")]


# --- pure ------------------------------------------------------------------------------------------

def test_targets_and_spec_problems() -> None:
    assert restores.target({"target": "inPlace"}) == ("inPlace", None)
    assert restores.target({"target": {"pvc": "x"}}) == ("pvc", "x")
    assert restores.problems({"replica": "db", "target": "elsewhere"})
    assert restores.problems({"replica": "db", "target": "inPlace", "timestamp": "t", "txid": "0" * 16})
    assert restores.problems({"replica": "db", "target": {"pvc": "x"}}) == []
    for bad in (0, "60", True):
        (problem,) = restores.problems({"replica": "db", "target": "inPlace", "stopTimeoutSeconds": bad})
        assert "spec.stopTimeoutSeconds" in problem


def test_result_is_read_from_the_last_json_line() -> None:
    message = "some log line\n" + json.dumps(RESULT) + "\n"
    assert restores.parse_result(message)["txid"] == "000000000000002a"
    assert restores.parse_result("error: boom") is None
    assert restores.parse_result(None) is None


def test_statefulset_volume_claim_template_resolves_to_pod_zero() -> None:
    sts = {"metadata": {"name": "db"}, "spec": {
        "replicas": 1, "template": {"spec": {"containers": [
            {"name": "app", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
        "volumeClaimTemplates": [{"metadata": {"name": "data"}}]}}
    where = restores.volume_for("StatefulSet", sts, make_replica()["spec"])
    assert where["volume"] == {"name": "lifeboat-data", "persistentVolumeClaim": {"claimName": "data-db-0"}}


def test_chart_crd_is_identical_and_target_is_required() -> None:
    import yaml
    from kube_helpers import REPO
    source = (REPO / "crds" / "sqliterestores.yaml").read_bytes()
    assert (REPO / "charts" / "lifeboat" / "crds" / "sqliterestores.yaml").read_bytes() == source
    (version,) = yaml.safe_load(source)["spec"]["versions"]
    assert version["schema"]["openAPIV3Schema"]["properties"]["spec"]["required"] == ["replica", "target"]
    assert version["subresources"] == {"status": {}}


NOW = restores._parse_time("2026-01-01T01:00:00Z")
RECORDED = {"kind": "Deployment", "name": "app", "replicas": 2}


def deployment_at(replicas: int) -> dict[str, Any]:
    return {"metadata": {"name": "app"}, "spec": {"replicas": replicas}}


def restoring(**status: Any) -> dict[str, Any]:
    return {"phase": "Restoring", "workload": RECORDED, "restoreStartTime": "2026-01-01T00:59:00Z", **status}


def test_a_workload_scaled_up_while_restoring_stops_the_job_and_scales_back() -> None:
    seen = restores.Observed(workload=deployment_at(1), job={"status": {}}, now=NOW)
    step = restores.advance({"replica": "db", "target": "inPlace"}, restoring(), seen)
    assert step.phase == "ScalingUp" and step.actions == [("delete_job",)]
    assert "Deployment app was scaled to 1 while restoring" in step.status["error"]
    # Pods back at 0 replicas (admitted while the webhook was down) stop it too.
    seen = restores.Observed(workload=deployment_at(0), pods=["app-x"], job={"status": {}}, now=NOW)
    assert "app-x" in restores.advance({"replica": "db", "target": "inPlace"}, restoring(), seen).status["error"]


def test_restoring_past_the_timeout_gives_up_but_a_finished_job_wins() -> None:
    spec = {"replica": "db", "target": "inPlace", "restoreTimeoutSeconds": 30}
    step = restores.advance(spec, restoring(), restores.Observed(workload=deployment_at(0), now=NOW))
    assert step.phase == "ScalingUp" and step.actions == [("delete_job",)]
    assert "within 30 s" in step.status["error"]
    done = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    seen = restores.Observed(workload=deployment_at(0), job=done, job_message=json.dumps(RESULT), now=NOW)
    assert restores.advance(spec, restoring(), seen).phase == "ScalingUp"
    assert "error" not in restores.advance(spec, restoring(), seen).status


def test_scaling_back_waits_for_the_jobs_pods() -> None:
    status = {"phase": "ScalingUp", "workload": RECORDED, "error": "stopped"}
    seen = restores.Observed(workload=deployment_at(0), job={"status": {}}, job_pods=["r1-restore-x"], now=NOW)
    step = restores.advance({"replica": "db", "target": "inPlace"}, status, seen)
    assert step.actions == [("delete_job",)] and "r1-restore-x" in step.status["message"] and not step.phase
    seen = restores.Observed(workload=deployment_at(0), now=NOW)
    step = restores.advance({"replica": "db", "target": "inPlace"}, status, seen)
    assert step.actions == [("scale", "Deployment", "app", 2)] and step.phase == "Failed"


def test_new_pods_are_refused_only_while_an_in_place_restore_holds_the_app() -> None:
    def restore_in(phase: str, target: Any = "inPlace") -> dict[str, Any]:
        return {"metadata": {"name": "r1"}, "spec": {"replica": "db", "target": target}, "status": {"phase": phase}}

    refusal = restores.pod_refusal([restore_in("Restoring")], "db")
    assert refusal is not None and "SQLiteRestore r1" in refusal
    assert restores.pod_refusal([restore_in("ScalingDown")], "db")
    assert restores.pod_refusal([restore_in("Restoring")], "other") is None
    assert restores.pod_refusal([restore_in("Restoring", {"pvc": "x"})], "db") is None
    for phase in ("Pending", "ScalingUp", "Succeeded", "Failed"):
        assert restores.pod_refusal([restore_in(phase)], "db") is None


def test_the_node_pin_narrows_every_required_term() -> None:
    pin = {"key": "metadata.name", "operator": "In", "values": ["n1"]}
    assert restores.pinned_affinity(None, "n1") == {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [pin]}]}}}
    terms = [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
             {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n2"]}]}]
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}},
                "podAntiAffinity": {"x": 1}}
    pinned = restores.pinned_affinity(affinity, "n1")
    assert pinned["podAntiAffinity"] == {"x": 1}
    got = pinned["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert [t["matchFields"][-1] for t in got] == [pin, pin] and len(got[1]["matchFields"]) == 2
    assert "matchFields" not in terms[0], "the template's own affinity was changed"
    assert restores.single_node({"spec": {"accessModes": ["ReadWriteOnce"]}})
    assert not restores.single_node({"spec": {"accessModes": ["ReadWriteMany"]}})
    assert not restores.single_node(None)
