"""Platform fit on a real API server: OpenShift's owner-reference enforcement and per-namespace uid ranges.

The test plane runs OwnerReferencesPermissionEnforcement (.ci/cluster.sh), as OpenShift does: an owner
reference that blocks its owner's deletion needs `update` on the owner's finalizers, which the operator
(running with the chart's ServiceAccount) must have been granted.
"""

from __future__ import annotations

from k8s import Operator, wait_until
from lifeboat.operator import injection, openshift

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
