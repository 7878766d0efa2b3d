"""Fixtures: a Kubernetes API emulated by kmock over HTTP, and the real operator (kopf) running against it.

The acceptance of the operator's features runs on a real kube-apiserver in tests/cluster
(test_cluster_replica_lifecycle.py, test_cluster_pod_flow.py, test_cluster_day2.py, ...). kmock stays for
fast handler tests of what the real control plane cannot reach quickly: a spec the schema would refuse at
apply time, agent status from a stand-in agent at a pod IP (kwok's pod IPs answer nothing), pods that never
terminate, failed restore Jobs with a chosen termination message, a restore held between scale-down and the
Job, the exact JSONPatch the webhook returns, the generated certificate Secret, and the metrics gauges.
"""

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
import yaml
from kube_helpers import NAMESPACE, REPO, free_port, running_operator
from lifeboat.operator import handlers, webhook


@pytest.fixture
def k8s(kmock: kmock.KubernetesEmulator) -> kmock.KubernetesEmulator:
    """kmock with the built-in kinds and the resources of the SQLiteReplica and SQLiteRestore CRDs."""
    kmock.resources.load_bundled()
    for name in ("sqlitereplicas.yaml", "sqliterestores.yaml"):
        crd = yaml.safe_load((REPO / "crds" / name).read_text())
        kmock.resources[f"lifeboat.dev/v1alpha1/{crd['spec']['names']['plural']}"] = kmock_resource_info(crd)
    return kmock


def kmock_resource_info(crd: dict[str, Any]) -> "kmock.ResourceInfo":
    """The discovery entry a real API server would publish for the CRD."""
    names = crd["spec"]["names"]
    return kmock.ResourceInfo(
        kind=names["kind"], singular=names["singular"], namespaced=crd["spec"]["scope"] == "Namespaced",
        shortnames=set(names["shortNames"]), categories=set(names["categories"]),
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"}, subresources={"status"})


@pytest.fixture
def kubeconfig(
    k8s: kmock.KubernetesEmulator, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point both kopf and the operator's API client at kmock."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(k8s.url).rstrip("/")}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


@pytest.fixture
def tls(tmp_path: pathlib.Path) -> webhook.TLSBundle:
    """A CA and a serving certificate for 127.0.0.1, written where the operator reads them."""
    bundle = webhook.generate_certificate(["localhost", "127.0.0.1"])
    bundle.write(tmp_path / "tls")
    return bundle


@pytest.fixture
async def operator(
    k8s: kmock.KubernetesEmulator, kubeconfig: None, tls: webhook.TLSBundle, tmp_path: pathlib.Path
) -> AsyncIterator[handlers.Options]:
    """The operator with certificate files given (the cert-manager way)."""
    options = handlers.Options(namespaces=(NAMESPACE,), webhook_addr="127.0.0.1", webhook_port=free_port(),
                               tls_dir=tmp_path / "tls", agent_image="lifeboat:test")
    async with running_operator(options):
        yield options
