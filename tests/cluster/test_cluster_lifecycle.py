"""Lifecycle and platform fit on a real API server: `helm uninstall` leaves nothing stuck behind kopf's
finalizer; OpenShift's owner-reference enforcement and per-namespace uid ranges.

The test plane runs OwnerReferencesPermissionEnforcement (.ci/cluster.sh), as OpenShift does: an owner
reference that blocks its owner's deletion needs `update` on the owner's finalizers, which the operator
(running with the chart's ServiceAccount) must have been granted.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from k8s import OPERATOR_NAMESPACE, RELEASE, Cluster, Operator, wait_until
from lifeboat.operator import injection, openshift, uninstall

NAMESPACE = "platform"
FIRST_UID = 1000650000


def test_owned_configmap_passes_owner_reference_enforcement(operator: Operator) -> None:
    cluster = operator.cluster
    if not cluster.exists("namespace", NAMESPACE, NAMESPACE):
        cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.apply({"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteReplica",
                   "metadata": {"name": "owned", "namespace": NAMESPACE},
                   "spec": {"database": "/data/app.db", "replica": {"url": "s3://backups/platform/owned"}}})
    wait_until(lambda: cluster.exists("configmap", "owned-lifeboat", NAMESPACE), 60, "the agent ConfigMap")
    (owner,) = cluster.get("configmap", "owned-lifeboat", namespace=NAMESPACE)["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["blockOwnerDeletion"]) == ("SQLiteReplica", "owned", True)


def test_injected_containers_run_as_the_namespaces_openshift_uid(operator: Operator) -> None:
    cluster = operator.cluster
    namespace = "uid-range"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": namespace,
                                "annotations": {openshift.UID_RANGE_ANNOTATION: f"{FIRST_UID}/10000"}}})
    cluster.apply({"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteReplica",
                   "metadata": {"name": "db", "namespace": namespace},
                   "spec": {"database": "/data/app.db", "replica": {"url": "s3://backups/platform/uid"}}})
    cluster.apply({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "app", "namespace": namespace, "labels": {"lifeboat.dev/replica": "db"}},
                   "spec": {"containers": [{"name": "app", "image": "app:1",
                                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                            "volumes": [{"name": "data", "emptyDir": {}}]}})
    spec = cluster.get("pod", "app", namespace=namespace)["spec"]
    ours = {c["name"]: c["securityContext"]["runAsUser"] for c in [*spec.get("initContainers", []), *spec["containers"]]
            if c["name"] in (injection.RESTORE_CONTAINER, injection.AGENT_CONTAINER)}
    assert ours == {injection.RESTORE_CONTAINER: FIRST_UID, injection.AGENT_CONTAINER: FIRST_UID}


def play_hook_job(cluster: Cluster, workdir: Path, outcome: dict[str, str]) -> None:
    """The kubelet's part for the post-delete hook Job: its command, run here as its ServiceAccount."""
    job = f"{RELEASE}-uninstall"
    pods = wait_until(lambda: cluster.get("pods", namespace=OPERATOR_NAMESPACE, selector=f"job-name={job}")["items"],
                      120, "the uninstall hook's pod")
    (container,) = pods[0]["spec"]["containers"]
    kubeconfig = cluster.service_account_kubeconfig(OPERATOR_NAMESPACE, pods[0]["spec"]["serviceAccountName"],
                                                    workdir / "uninstall.kubeconfig")
    command = [str(Path(sys.executable).parent / container["command"][0]), *container["args"]]
    run = subprocess.run(command, capture_output=True, text=True, timeout=180,
                         env={**cluster.env(), "KUBECONFIG": str(kubeconfig)})
    outcome["output"] = run.stdout + run.stderr
    cluster.kubectl("annotate", "pod", pods[0]["metadata"]["name"], "-n", OPERATOR_NAMESPACE,
                    f"kwok.lifeboat.dev/exit-code={run.returncode}")


def test_uninstall_leaves_no_replica_or_namespace_stuck(
    operator: Operator, readme_commands: list[str], tmp_path: Path
) -> None:
    cluster = operator.cluster
    namespace = "lifecycle"
    cluster.kubectl("create", "namespace", namespace)
    cluster.apply({"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteReplica",
                   "metadata": {"name": "kept", "namespace": namespace},
                   "spec": {"database": "/data/app.db", "replica": {"url": "s3://backups/lifecycle/kept"}}})
    wait_until(lambda: uninstall.FINALIZER in (cluster.get("sqlitereplica", "kept", namespace=namespace)
                                               ["metadata"].get("finalizers") or []), 60, "kopf's finalizer")
    operator.stop()  # as helm deletes the Deployment
    operator.unroute()
    outcome: dict[str, str] = {}
    kubelet = threading.Thread(target=play_hook_job, args=(cluster, tmp_path, outcome), daemon=True)
    kubelet.start()
    try:
        cluster.run(f"helm uninstall {RELEASE} --namespace {OPERATOR_NAMESPACE} --wait", timeout=300)
        kubelet.join(timeout=60)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")
        wait_until(lambda: not cluster.exists("namespace", namespace, namespace), 120,
                   f"namespace {namespace} gone after the operator was uninstalled")
        assert "released sqlitereplicas/lifecycle/kept" in outcome.get("output", ""), outcome
    finally:
        # The next tests find the chart installed and the operator running, as the session left them.
        cluster.run(readme_commands[0], timeout=300)
        cluster.kubectl("scale", "deployment", RELEASE, "-n", OPERATOR_NAMESPACE, "--replicas=0")
        operator.start()
