"""Acceptance of the operator's SQLiteReplica features on the real API server (with the chart's RBAC).

A SQLiteReplica's lifecycle (owned ConfigMap, spec updates, garbage collection by the controller-manager),
admission of pods the webhook has already injected or whose database is on no volume, the single-writer
guard on a surging Deployment, drift with ``recreateUninjected``, and an in-place restore that resumes
after the operator restarts in the middle. The controller-manager makes the pods, kwok runs them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import inplace
import pytest
import yaml
from k8s import OPERATOR_NAMESPACE, RELEASE, Cluster, Operator, wait_until
from lifeboat.operator import handlers, injection
from lifeboat.operator import spec as specs

NAMESPACE = "lifecycle"
SECRET_VALUE = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


@pytest.fixture(scope="module")
def kube(operator: Operator) -> Iterator[Cluster]:
    """The cluster, with the operator running and this module's namespace."""
    cluster = operator.cluster
    cluster.kubectl("create", "namespace", NAMESPACE)
    yield cluster


def replica(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteReplica",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"database": "/data/app.db", "replica": {"url": f"s3://backups/{NAMESPACE}/{name}"}, **spec}}


def app_template(replica_name: str | None, app: str) -> dict[str, Any]:
    """A pod template of one app container with its database volume at /data, labelled or not."""
    labels = {"app": app} | ({specs.REPLICA_LABEL: replica_name} if replica_name else {})
    return {"metadata": {"labels": labels}, "spec": {
        "containers": [{"name": "app", "image": "app:1", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        "volumes": [{"name": "data", "emptyDir": {}}]}}


def deployment(name: str, replica_name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": app_template(replica_name, name), **spec}}


def bare_pod(name: str, replica_name: str | None) -> dict[str, Any]:
    template = app_template(replica_name, name)
    return {"apiVersion": "v1", "kind": "Pod", "spec": template["spec"],
            "metadata": {"name": name, "namespace": NAMESPACE, **template["metadata"]}}


def condition(cluster: Cluster, name: str, type_: str) -> dict[str, Any]:
    status = cluster.get("sqlitereplica", name, namespace=NAMESPACE).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def condition_is(cluster: Cluster, name: str, type_: str, status: str) -> Any:
    return lambda: (found := condition(cluster, name, type_)).get("status") == status and found


def configmap(cluster: Cluster, name: str) -> dict[str, Any] | None:
    found = cluster.kubectl("get", "configmap", f"{name}-lifeboat", "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def create(cluster: Cluster, obj: dict[str, Any]) -> None:
    """``kubectl create`` (not apply: no last-applied annotation that differs between two pods)."""
    cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(obj))


def warnings(cluster: Cluster, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in cluster.get("events", namespace=NAMESPACE)["items"]
            if e["involvedObject"]["name"] == name and e.get("reason") == reason and e["type"] == "Warning"]


def running(cluster: Cluster, selector: str) -> list[dict[str, Any]]:
    return inplace.running_pods(cluster, NAMESPACE, selector)


def test_replica_owns_its_configmap_which_follows_the_spec_and_goes_with_it(kube: Cluster) -> None:
    kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": NAMESPACE},
                "stringData": {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET_VALUE}})
    kube.apply(replica("owned", syncInterval="1s", replica={
        "url": "s3://backups/app", "endpoint": "http://minio:9000", "forcePathStyle": True,
        "credentials": {"secretName": "s3-creds"}}))

    made = wait_until(lambda: configmap(kube, "owned"), 60, "the replica's ConfigMap")
    assert yaml.safe_load(made["data"]["lifeboat.yml"]) == {
        "addr": ":9090",
        "dbs": [{"path": "/data/app.db", "replica": {
            "url": "s3://backups/app", "endpoint": "http://minio:9000", "force-path-style": True,
            "sync-interval": "1s"}}],
    }
    stored = kube.get("sqlitereplica", "owned", namespace=NAMESPACE)
    (owner,) = made["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("SQLiteReplica", "owned", stored["metadata"]["uid"])
    assert owner["controller"] is True
    assert SECRET_VALUE not in yaml.safe_dump(made)
    ready = wait_until(condition_is(kube, "owned", "ConfigReady", "True"), 60, "ConfigReady=True")
    assert ready["reason"]
    stored = kube.get("sqlitereplica", "owned", namespace=NAMESPACE)
    assert stored["status"]["configMap"] == "owned-lifeboat"
    assert SECRET_VALUE not in yaml.safe_dump(stored)

    kube.kubectl("patch", "sqlitereplica", "owned", "-n", NAMESPACE, "--type=merge",
                 "-p", '{"spec": {"syncInterval": "5s", "paused": true}}')

    def rendered() -> dict[str, Any] | None:
        config = yaml.safe_load(configmap(kube, "owned")["data"]["lifeboat.yml"])  # type: ignore[index]
        return config if config["dbs"][0]["replica"]["sync-interval"] == "5s" else None

    config = wait_until(rendered, 60, "the ConfigMap rewritten")
    assert config["paused"] is True
    assert SECRET_VALUE not in yaml.safe_dump(config)

    # The controller-manager's garbage collector removes what the replica owned.
    kube.kubectl("delete", "sqlitereplica", "owned", "-n", NAMESPACE)
    wait_until(lambda: configmap(kube, "owned") is None, 90, "the owned ConfigMap gone")


CREDS_NAMESPACE = f"{NAMESPACE}-creds"


def s3_replica(name: str, secret: str) -> dict[str, Any]:
    obj = replica(name, replica={"url": f"s3://backups/{name}", "credentials": {"secretName": secret}})
    obj["metadata"]["namespace"] = CREDS_NAMESPACE
    return obj


def s3_secret(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": CREDS_NAMESPACE},
            "stringData": data}


def credentials(cluster: Cluster, name: str) -> dict[str, Any]:
    status = cluster.get("sqlitereplica", name, namespace=CREDS_NAMESPACE).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == "CredentialsReady"), {})


def test_credentials_are_checked_where_the_chart_grants_secret_access(kube: Cluster) -> None:
    """The access the chart grants in each of its secretNamespaces (README's install names none): `get`
    Secrets, bound to the operator's ServiceAccount, made here for one namespace."""
    kube.kubectl("create", "namespace", CREDS_NAMESPACE)
    kube.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": f"{RELEASE}-secrets", "namespace": CREDS_NAMESPACE},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]},
               {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": f"{RELEASE}-secrets", "namespace": CREDS_NAMESPACE},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{RELEASE}-secrets"},
                "subjects": [{"kind": "ServiceAccount", "name": RELEASE, "namespace": OPERATOR_NAMESPACE}]})
    kube.apply(s3_secret("partial", AWS_ACCESS_KEY_ID="AKIAEXAMPLE", OTHER=SECRET_VALUE),
               s3_replica("partial", "partial"), s3_replica("late", "late"))

    partial = wait_until(lambda: credentials(kube, "partial").get("status") == "False"
                         and credentials(kube, "partial"), 60, "partial: CredentialsReady=False")
    assert partial["reason"] == "SecretKeysMissing"
    assert "AWS_SECRET_ACCESS_KEY" in partial["message"] and SECRET_VALUE not in partial["message"]

    missing = wait_until(lambda: credentials(kube, "late").get("status") == "False"
                         and credentials(kube, "late"), 60, "late: CredentialsReady=False")
    assert missing["reason"] == "SecretNotFound" and "late" in missing["message"]
    events = [e for e in kube.get("events", namespace=CREDS_NAMESPACE)["items"]
              if e["involvedObject"]["name"] == "late" and e.get("reason") == "SecretNotFound"]
    assert events and events[0]["type"] == "Warning"

    # No spec change: the status timer's next round finds the Secret.
    kube.apply(s3_secret("late", AWS_ACCESS_KEY_ID="AKIAEXAMPLE", AWS_SECRET_ACCESS_KEY=SECRET_VALUE))
    healed = wait_until(lambda: credentials(kube, "late").get("status") == "True" and credentials(kube, "late"),
                        handlers.STATUS_INTERVAL + 60, "late: CredentialsReady=True")
    assert healed["reason"] == "SecretFound"
    stored = kube.get("sqlitereplica", "late", namespace=CREDS_NAMESPACE)
    assert SECRET_VALUE not in json.dumps(stored)
    assert SECRET_VALUE not in json.dumps(kube.get("configmap", "late-lifeboat", namespace=CREDS_NAMESPACE))


def test_an_injected_pod_admitted_again_is_left_as_it_is(kube: Cluster) -> None:
    kube.apply(replica("again"))
    create(kube, bare_pod("first", "again"))
    first = kube.get("pod", "first", namespace=NAMESPACE)
    assert [c["name"] for c in first["spec"]["initContainers"]] == [injection.RESTORE_CONTAINER,
                                                                    injection.AGENT_CONTAINER]
    # The injected pod as a manifest, through the webhook a second time.
    second = {"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": "second", "namespace": NAMESPACE, "labels": first["metadata"]["labels"],
                           "annotations": first["metadata"]["annotations"]},
              "spec": {key: value for key, value in first["spec"].items() if key != "nodeName"}}
    create(kube, second)
    stored = kube.get("pod", "second", namespace=NAMESPACE)
    assert stored["spec"]["initContainers"] == first["spec"]["initContainers"]
    assert stored["spec"]["containers"] == first["spec"]["containers"]
    assert stored["spec"]["volumes"] == first["spec"]["volumes"]
    assert stored["metadata"]["annotations"] == first["metadata"]["annotations"]


def test_a_pod_whose_database_is_on_no_volume_is_denied_saying_so(kube: Cluster) -> None:
    kube.apply(replica("elsewhere", database="/var/lib/app/app.db"))
    proc = kube.apply(bare_pod("novolume", "elsewhere"), check=False)
    assert proc.returncode != 0
    assert 'admission webhook "inject.pods.lifeboat.dev" denied the request' in proc.stderr
    assert "/var/lib/app/app.db is on no volume" in proc.stderr
    assert not kube.exists("pod", "novolume", NAMESPACE)


def test_single_writer_guard_names_the_field_to_change(kube: Cluster) -> None:
    for name in ("surge", "two", "single"):
        kube.apply(replica(name))
    kube.apply(deployment("surge", "surge", strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}),
               deployment("two", "two", replicas=2, strategy={"type": "Recreate"}),
               deployment("single", "single", strategy={"type": "Recreate"}))

    surge = wait_until(condition_is(kube, "surge", "SingleWriter", "False"), 120, "surge: SingleWriter=False")
    assert "spec.strategy.rollingUpdate.maxSurge=1" in surge["message"]
    assert "set spec.strategy.type to Recreate, or spec.strategy.rollingUpdate.maxSurge to 0" in surge["message"]
    assert "spec.replicas" not in surge["message"]

    two = wait_until(condition_is(kube, "two", "SingleWriter", "False"), 120, "two: SingleWriter=False")
    assert two["reason"] == "MultipleWriters"
    assert "Deployment two has spec.replicas=2: set spec.replicas to 1" in two["message"]
    pods = wait_until(lambda: len(found := running(kube, "app=two")) == 2 and found, 90, "both pods Running")
    writers = sorted(p["metadata"]["name"] for p in pods)
    wait_until(lambda: f"2 pods run the agent at once ({', '.join(writers)})"
               in condition(kube, "two", "SingleWriter")["message"], 120, "both pods named as writers")
    warning = wait_until(lambda: warnings(kube, "two", "MultipleWriters"), 60, "the MultipleWriters Event")
    assert "spec.replicas" in warning[0]["message"]

    single = wait_until(lambda: condition(kube, "single", "SingleWriter"), 120, "single: SingleWriter")
    assert (single["status"], single["reason"]) == ("True", "SingleWriter")


def test_uninjected_pods_are_reported_and_only_controlled_ones_recreated(kube: Cluster) -> None:
    """Pods created unlabelled (the webhook's objectSelector skips them), then labelled: they run no agent."""
    kube.apply({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "owned", "namespace": NAMESPACE},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "owned"}},
                         "template": app_template(None, "owned")}},
               bare_pod("bare", None))
    (old,) = wait_until(lambda: running(kube, "app=owned"), 90, "the ReplicaSet's pod Running")
    for name in (old["metadata"]["name"], "bare"):
        kube.kubectl("label", "pod", name, "-n", NAMESPACE, f"{specs.REPLICA_LABEL}=drift")
    kube.apply(replica("drift"))

    reported = wait_until(condition_is(kube, "drift", "Injected", "False"), 90, "Injected=False")
    assert reported["reason"] == "UninjectedPods"
    assert old["metadata"]["name"] in reported["message"] and "bare" in reported["message"]
    assert "recreateUninjected" in reported["message"]
    status = kube.get("sqlitereplica", "drift", namespace=NAMESPACE)["status"]
    assert sorted(status["uninjectedPods"]) == sorted([old["metadata"]["name"], "bare"])
    assert wait_until(lambda: warnings(kube, "drift", "UninjectedPods"), 60, "the UninjectedPods Event")
    assert kube.exists("pod", old["metadata"]["name"], NAMESPACE), "deleted unasked"

    kube.kubectl("patch", "sqlitereplica", "drift", "-n", NAMESPACE, "--type=merge",
                 "-p", '{"spec": {"recreateUninjected": true}}')
    wait_until(lambda: not kube.exists("pod", old["metadata"]["name"], NAMESPACE), 90, "the owned pod deleted")
    kept = wait_until(lambda: (c := condition(kube, "drift", "Injected")).get("status") == "False"
                      and "not deleting bare" in c.get("message", "") and c, 90, "the bare pod kept, said so")
    assert "no controller would recreate" in kept["message"]
    assert kube.exists("pod", "bare", NAMESPACE)


RESTORE_NAMESPACE = f"{NAMESPACE}-restore"


@pytest.fixture(scope="module")
def restorable(kube: Cluster) -> Cluster:
    """inplace's replica and app, the app's database on PVC "data"; PVC "scratch" to restore into."""
    kube.kubectl("create", "namespace", RESTORE_NAMESPACE)
    objects = inplace.manifests(RESTORE_NAMESPACE)
    kube.apply(*inplace.bound_claim(RESTORE_NAMESPACE, "scratch"), *objects)
    wait_until(lambda: inplace.running_pods(kube, RESTORE_NAMESPACE, f"app={inplace.APP}"), 90,
               "the app's pod Running")
    return kube


def restore_events(cluster: Cluster, name: str) -> set[str]:
    return {e.get("reason") for e in cluster.get("events", namespace=RESTORE_NAMESPACE)["items"]
            if e["involvedObject"]["name"] == name}


def test_a_pvc_restore_gets_a_job_on_that_claim_and_leaves_the_app_alone(restorable: Cluster) -> None:
    kube = restorable
    kube.apply({"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteRestore",
                "metadata": {"name": "side", "namespace": RESTORE_NAMESPACE},
                "spec": {"replica": inplace.REPLICA, "target": {"pvc": "scratch"}, "txid": "0000000000000010"}})
    name = wait_until(lambda: inplace.status(kube, RESTORE_NAMESPACE, "side").get("job"), 90, "the restore Job")
    (job,) = inplace.jobs(kube, RESTORE_NAMESPACE, "side")
    assert job["metadata"]["name"] == name
    pod_spec = job["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    data = next(v for v in pod_spec["volumes"] if v["name"] == "lifeboat-data")
    assert data["persistentVolumeClaim"] == {"claimName": "scratch"}
    assert any(m["name"] == "lifeboat-data" and m["mountPath"] == "/data" for m in container["volumeMounts"])
    assert "0000000000000010" in container["args"][container["args"].index("-txid") + 1:]
    inplace.end_job(kube, RESTORE_NAMESPACE, name)
    done = inplace.finished(kube, RESTORE_NAMESPACE, "side")
    assert done["phase"] == "Succeeded", done
    assert "workload" not in done
    assert inplace.replicas(kube, RESTORE_NAMESPACE) == 1
    template = kube.get("deployment", inplace.APP, namespace=RESTORE_NAMESPACE)["spec"]["template"]
    assert template["metadata"]["labels"][specs.REPLICA_LABEL] == inplace.REPLICA


def test_in_place_restore_resumes_after_the_operator_restarts(restorable: Cluster, operator: Operator) -> None:
    kube, namespace = restorable, RESTORE_NAMESPACE
    inplace.start_restore(kube, namespace, "resume")

    scaled = wait_until(lambda: (s := inplace.status(kube, namespace, "resume")).get("workload") and s, 90,
                        "the workload recorded")
    assert scaled["workload"] == {"kind": "Deployment", "name": inplace.APP, "replicas": 1}
    job = wait_until(lambda: inplace.status(kube, namespace, "resume").get("job"), 120, "the restore Job")
    assert inplace.status(kube, namespace, "resume")["phase"] == "Restoring"
    assert inplace.replicas(kube, namespace) == 0
    (made,) = inplace.jobs(kube, namespace, "resume")

    # The operator goes mid-restore; the Job ends while it is away.
    operator.stop()
    try:
        inplace.end_job(kube, namespace, job)
    finally:
        operator.start()

    done = inplace.finished(kube, namespace, "resume")
    assert done["phase"] == "Succeeded", done
    assert done["workload"]["replicas"] == 1  # the recorded count survived the restart
    assert done["result"]["txid"] == inplace.RESULT["txid"]
    assert inplace.replicas(kube, namespace) == 1
    assert [j["metadata"]["uid"] for j in inplace.jobs(kube, namespace, "resume")] == [made["metadata"]["uid"]]
    reasons = restore_events(kube, "resume")
    assert {"ScalingDown", "Restoring", "JobCreated", "Restored", "Succeeded"} <= reasons, reasons
