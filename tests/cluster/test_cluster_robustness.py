"""The operator on a real watch: the API server restarts under it (its watches break mid-stream, and
come back 410 Gone: the new watch cache starts after the operator's resourceVersion).

kopf must reconnect and miss nothing: a SQLiteReplica changed right after the restart, and one created
afterwards, both reach their ConfigMaps; the webhook keeps injecting; an in-place restore caught by the
restart goes on with the Job it made. Two replicas share the webhook.
"""

from __future__ import annotations

import json
import subprocess
import threading
from typing import Any

import inplace
from k8s import REPO, Cluster, Operator, wait_until
from lifeboat.operator import injection

NAMESPACE = "robust"


def replica(name: str, interval: str) -> dict[str, Any]:
    return {"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteReplica",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"database": "/data/app.db", "syncInterval": interval,
                     "replica": {"url": f"s3://backups/robust/{name}"}}}


def config(cluster: Cluster, name: str) -> str:
    found = cluster.kubectl("get", "configmap", f"{name}-lifeboat", "-n", NAMESPACE, "-o",
                            "jsonpath={.data.lifeboat\\.yml}", check=False)
    return found.stdout if found.returncode == 0 else ""


def restart_api_server() -> None:
    restart = subprocess.run(["bash", str(REPO / ".ci" / "cluster.sh"), "restart-apiserver"],
                             capture_output=True, text=True, timeout=300)
    assert restart.returncode == 0, restart.stderr


def test_the_operator_misses_nothing_across_an_api_server_restart(operator: Operator) -> None:
    cluster = operator.cluster
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.apply(replica("before", "1s"))
    wait_until(lambda: "sync-interval: 1s" in config(cluster, "before"), 60, "the first ConfigMap")

    logged = len(operator.log.read_text())
    restart_api_server()

    cluster.apply(replica("before", "2s"))  # a change right after the restart
    cluster.apply(replica("after", "3s"))  # and an object the operator never saw
    wait_until(lambda: "sync-interval: 2s" in config(cluster, "before"), 90, "the change reconciled")
    wait_until(lambda: "sync-interval: 3s" in config(cluster, "after"), 90, "the new replica reconciled")
    assert operator.proc is not None and operator.proc.poll() is None, operator.tail()
    # The new API server's watch cache starts after the operator's last resourceVersion: its watch
    # came back with 410 Gone, and kopf listed again (what it logs for exactly that case).
    assert "Restarting the watch-stream for sqlitereplicas" in operator.log.read_text()[logged:]

    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "after-restart", "namespace": NAMESPACE, "labels": {"lifeboat.dev/replica": "after"}},
           "spec": {"containers": [{"name": "app", "image": "app:1",
                                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                    "volumes": [{"name": "data", "emptyDir": {}}]}}
    cluster.apply(pod)
    injected = cluster.get("pod", "after-restart", namespace=NAMESPACE)
    assert injected["spec"]["initContainers"][0]["name"] == injection.RESTORE_CONTAINER


def labelled_pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"lifeboat.dev/replica": "after"}},
            "spec": {"containers": [{"name": "app", "image": "app:1",
                                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                     "volumes": [{"name": "data", "emptyDir": {}}]}}


def test_two_replicas_serve_the_webhook_and_make_one_restore_job(
    operator: Operator, tmp_path_factory: Any
) -> None:
    """A second replica shares the first one's generated certificate and serves alone when the first goes."""
    cluster = operator.cluster
    second = Operator.from_chart(cluster, tmp_path_factory.mktemp("operator-b"), replica="b")
    second.start()
    try:
        operator.stop()
        operator.unroute()
        try:
            cluster.apply(labelled_pod("by-the-second"))
            pod = cluster.get("pod", "by-the-second", namespace=NAMESPACE)
            assert pod["spec"]["initContainers"][0]["name"] == injection.RESTORE_CONTAINER
        finally:
            operator.start()
        cluster.apply({"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteRestore",
                       "metadata": {"name": "once", "namespace": NAMESPACE},
                       "spec": {"replica": "after", "target": {"pvc": "scratch"}}})
        job = wait_until(lambda: (cluster.get("sqliterestore", "once", namespace=NAMESPACE).get("status") or {})
                         .get("job"), 60, "the restore Job")
        jobs = cluster.get("jobs", namespace=NAMESPACE, selector="lifeboat.dev/restore=once")["items"]
        assert [j["metadata"]["name"] for j in jobs] == [job]
        assert second.proc is not None and second.proc.poll() is None, second.tail()
    finally:
        second.stop()
        second.unroute()


def test_status_writes_racing_the_operator_lose_none_of_its_verdicts(operator: Operator) -> None:
    """Another writer keeps changing the status while the spec changes: the operator's patches (guarded
    by resourceVersion) conflict, are retried, and the conditions end at the new generation."""
    cluster = operator.cluster
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    cluster.apply(replica("raced", "1s"))
    wait_until(lambda: "sync-interval: 1s" in config(cluster, "raced"), 60, "the first ConfigMap")
    stop = threading.Event()

    def other_writer() -> None:
        count = 0
        while not stop.is_set():
            count += 1
            cluster.kubectl("patch", "sqlitereplica", "raced", "-n", NAMESPACE, "--subresource=status",
                            "--type=merge", "-p", json.dumps({"status": {"lagSeconds": count}}), check=False)

    writer = threading.Thread(target=other_writer)
    writer.start()
    try:
        cluster.apply(replica("raced", "7s"))
        wait_until(lambda: "sync-interval: 7s" in config(cluster, "raced"), 60, "the change reconciled")
    finally:
        stop.set()
        writer.join()

    def settled() -> bool:
        obj = cluster.get("sqlitereplica", "raced", namespace=NAMESPACE)
        conditions = {c["type"]: c for c in obj["status"].get("conditions") or []}
        ready = conditions.get("ConfigReady") or {}
        return ready.get("status") == "True" and ready.get("observedGeneration") == obj["metadata"]["generation"]

    wait_until(settled, 60, "ConfigReady at the new generation")


def test_a_restore_caught_by_an_api_server_restart_goes_on_with_its_one_job(operator: Operator) -> None:
    """The watch of SQLiteRestores breaks and expires (410 Gone) while the app is down and the Job runs:
    the operator lists again, keeps the Job it made (no second one), and scales the app back."""
    cluster = operator.cluster
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    inplace.deploy(cluster, NAMESPACE)
    inplace.start_restore(cluster, NAMESPACE, "caught")
    job_name = wait_until(lambda: inplace.status(cluster, NAMESPACE, "caught").get("job"), 120, "the restore Job")
    (job,) = inplace.jobs(cluster, NAMESPACE, "caught")

    logged = len(operator.log.read_text())
    restart_api_server()
    inplace.end_job(cluster, NAMESPACE, job_name)
    status = inplace.finished(cluster, NAMESPACE, "caught")
    assert status["phase"] == "Succeeded", status
    assert inplace.replicas(cluster, NAMESPACE) == status["workload"]["replicas"] == 1
    assert [j["metadata"]["uid"] for j in inplace.jobs(cluster, NAMESPACE, "caught")] == [job["metadata"]["uid"]]
    assert "Restarting the watch-stream for sqliterestores" in operator.log.read_text()[logged:]
    assert operator.proc is not None and operator.proc.poll() is None, operator.tail()
