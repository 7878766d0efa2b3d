"""Two operator replicas at once: one reconciles, both admit; the other takes over a restore mid-way.

The session's operator starts first, so it is the elder and leads; a second one started beside it
pauses. What each of them does shows in its own log (kopf names the handler and the object). The
leader is then killed (SIGKILL: no goodbye in the peering object) in the middle of an in-place
SQLiteRestore, with the app scaled to 0 and the restore Job running; the other must take over once the
dead leader's peering record expires, finish the restore with the same Job, and scale the app back.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import inplace
import pytest
from k8s import OPERATOR_NAMESPACE, RELEASE, Operator, wait_until
from lifeboat.operator import injection, leadership

NAMESPACE = "leader"
# kopf starts a replica paused until it has read the peering object; it logs only when that changes.
RESUMED = "Resuming operations after the pause"


def log_size(operator: Operator) -> int:
    return len(operator.log.read_text()) if operator.log.exists() else 0


def logged_since(operator: Operator, offset: int) -> str:
    return operator.log.read_text()[offset:]


def acted_on(log: str, name: str) -> list[str]:
    """The log's lines of handlers and timers that ran to success on the object ``name`` (kopf names both)."""
    return [line for line in log.splitlines()
            if f"[{NAMESPACE}/{name}]" in line and line.rstrip().endswith("succeeded.")
            and ("Handler '" in line or "Timer '" in line)]


def replica(name: str) -> dict[str, Any]:
    return {"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteReplica",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"database": "/data/app.db", "replica": {"url": f"s3://backups/{NAMESPACE}/{name}"}}}


def labelled_pod(name: str, replica_name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"lifeboat.dev/replica": replica_name}},
            "spec": {"containers": [{"name": "app", "image": "app:1",
                                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                     "volumes": [{"name": "data", "emptyDir": {}}]}}


def peers(operator: Operator) -> dict[str, Any]:
    """The replicas' records in the chart's peering object: {identity: {priority, lifetime, lastseen}}."""
    return operator.cluster.get("clusterkopfpeering", RELEASE).get("status") or {}


@pytest.fixture(scope="module")
def pair(operator: Operator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Operator, Operator]]:
    """(leader, follower): the session's operator, and a second replica started after it."""
    cluster = operator.cluster
    cluster.kubectl("create", "namespace", NAMESPACE)
    follower = Operator.from_chart(cluster, tmp_path_factory.mktemp("operator-follower"), replica="follower")
    follower.start()
    try:
        # Its watch of SQLiteReplicas starts (kopf logs "Starting…", or "Pausing…" when paused).
        wait_until(lambda: "the watch-stream for sqlitereplicas" in follower.log.read_text(), 60,
                   "the second replica's watch")
        yield operator, follower
    finally:
        follower.stop()
        follower.unroute()
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start()  # the session's operator, for the tests after these


def test_one_replica_reconciles_and_both_admit(pair: tuple[Operator, Operator]) -> None:
    leader, follower = pair
    cluster = leader.cluster
    since = log_size(follower)
    cluster.apply(replica("solo"))
    wait_until(lambda: cluster.exists("configmap", "solo-lifeboat", NAMESPACE), 60, "the agent ConfigMap")

    def reported() -> bool:  # by the status timer
        found = cluster.get("sqlitereplica", "solo", namespace=NAMESPACE).get("status") or {}
        return any(c["type"] == "Ready" for c in found.get("conditions") or [])

    wait_until(reported, 60, "the status timer's Ready condition")
    led = acted_on(leader.log.read_text(), "solo")
    assert any("Handler 'reconcile" in line for line in led) and any("Timer '" in line for line in led), led
    acted = acted_on(logged_since(follower, since), "solo")
    assert not acted, "the paused replica reconciled too:\n" + "\n".join(acted)
    assert len(peers(leader)) == 2, peers(leader)
    assert RESUMED not in logged_since(follower, since), follower.tail()

    # Each of them alone behind the webhook Service admits (and injects) a pod.
    for serving, other in ((follower, leader), (leader, follower)):
        other.unroute()
        try:
            name = f"by-{serving.replica}"
            cluster.apply(labelled_pod(name, "solo"))
            pod = cluster.get("pod", name, namespace=NAMESPACE)
            assert [c["name"] for c in pod["spec"]["initContainers"]] == [
                injection.RESTORE_CONTAINER, injection.AGENT_CONTAINER], name
        finally:
            other._route_service()


def test_the_other_replica_finishes_the_restore_the_dead_leader_started(pair: tuple[Operator, Operator]) -> None:
    leader, follower = pair
    cluster = leader.cluster
    inplace.deploy(cluster, NAMESPACE)
    since = log_size(follower)
    inplace.start_restore(cluster, NAMESPACE, "takeover")
    job_name = wait_until(lambda: inplace.status(cluster, NAMESPACE, "takeover").get("job"), 120, "the restore Job")
    (job,) = inplace.jobs(cluster, NAMESPACE, "takeover")
    assert inplace.replicas(cluster, NAMESPACE) == 0
    assert not acted_on(logged_since(follower, since), "takeover"), "the paused replica acted on the restore"

    # The leader dies mid-restore, without removing itself from the peering object.
    assert leader.proc is not None
    leader.proc.kill()
    leader.proc.wait()
    leader.unroute()
    inplace.end_job(cluster, NAMESPACE, job_name)

    # The dead leader's record expires after its lifetime; then the follower resumes.
    wait_until(lambda: RESUMED in logged_since(follower, since), leadership.LIFETIME + 60, "the takeover")
    status = inplace.finished(cluster, NAMESPACE, "takeover")
    assert status["phase"] == "Succeeded", status
    assert status["result"]["txid"] == inplace.RESULT["txid"]
    assert status["workload"]["replicas"] == 1, status
    assert inplace.replicas(cluster, NAMESPACE) == 1
    assert [j["metadata"]["uid"] for j in inplace.jobs(cluster, NAMESPACE, "takeover")] == [job["metadata"]["uid"]]
    assert acted_on(logged_since(follower, since), "takeover"), "the follower did not finish the restore"
    wait_until(lambda: inplace.running_pods(cluster, NAMESPACE, f"app={inplace.APP}"), 90,
               "the app running again (injected by the follower)")


def test_without_its_peering_object_the_operator_refuses_to_start(
    operator: Operator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Else it would wait, paused, for a peer record it can never write."""
    lonely = Operator.from_chart(operator.cluster, tmp_path_factory.mktemp("operator-lonely"), replica="lonely")
    argv = [str(Path(sys.executable).parent / "lifeboat-operator"), *lonely.args, "--peering=nowhere",
            f"--webhook-addr={lonely.address}", f"--webhook-port={lonely.webhook_port}",
            f"--tls-dir={lonely.workdir / 'tls'}", "--liveness-port=0", "--metrics-port=0"]
    env = {**os.environ, "KUBECONFIG": str(lonely.kubeconfig), "POD_NAMESPACE": OPERATOR_NAMESPACE}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    ran = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode != 0
    assert "--peering: ClusterKopfPeering nowhere (forbidden" in ran.stdout + ran.stderr, ran.stderr[-3000:]
