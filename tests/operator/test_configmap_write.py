"""The agent ConfigMap is written without reading it: a patch where it is expected, a create where not,
each falling back to the other."""

from typing import Any

import kmock
from kube_helpers import NAMESPACE
from lifeboat.operator import handlers, kube
from workloads import stored

CONFIGMAPS = f"/api/v1/namespaces/{NAMESPACE}/configmaps"


def writes(k8s: kmock.KubernetesEmulator) -> list[str]:
    return [f"{r.method.name} {r.url.path}" for r in list(k8s)
            if r.method in (kmock.method.POST, kmock.method.PATCH) and r.url.path.startswith(CONFIGMAPS)]


def body(sync_interval: str) -> dict[str, Any]:
    return handlers.configmap_body("db", NAMESPACE, {"database": "/data/app.db", "syncInterval": sync_interval,
                                                     "replica": {"url": "s3://backups/app"}})


async def test_a_configmap_expected_but_missing_is_created_after_the_patch(
    k8s: kmock.KubernetesEmulator, kubeconfig: None
) -> None:
    lifeboat = kube.Kube(kube.load_api_client())

    await lifeboat.apply_configmap(NAMESPACE, body("1s"), exists=True)

    assert writes(k8s) == [f"PATCH {CONFIGMAPS}/db-lifeboat", f"POST {CONFIGMAPS}"]
    assert stored(k8s, "v1/configmaps", "db-lifeboat") is not None


async def test_a_configmap_created_where_it_exists_is_patched_after_the_conflict(
    k8s: kmock.KubernetesEmulator, kubeconfig: None
) -> None:
    lifeboat = kube.Kube(kube.load_api_client())
    await lifeboat.apply_configmap(NAMESPACE, body("1s"), exists=False)

    await lifeboat.apply_configmap(NAMESPACE, body("7s"), exists=False)

    assert writes(k8s) == [f"POST {CONFIGMAPS}", f"POST {CONFIGMAPS}", f"PATCH {CONFIGMAPS}/db-lifeboat"]
    assert "7s" in str(stored(k8s, "v1/configmaps", "db-lifeboat"))
