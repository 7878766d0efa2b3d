"""The operator's resource handlers, run by kopf against kmock over HTTP."""

import asyncio
import base64
import json
import pathlib
from typing import Any

import aiohttp.web
import kmock
import pytest
from kube_helpers import NAMESPACE, create, eventually, free_port, make_replica, running_operator
from lifeboat.operator import credentials, handlers, webhook
from workloads import condition, patch, stored

SECRET_VALUE = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
REPLICAS = "/apis/lifeboat.dev/v1alpha1/namespaces/apps/sqlitereplicas"


async def create_secret(k8s: kmock.KubernetesEmulator, **data: str) -> None:
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    await create(k8s, f"/api/v1/namespaces/{NAMESPACE}/secrets",
                 {"apiVersion": "v1", "kind": "Secret",
                  "metadata": {"name": "s3-creds", "namespace": NAMESPACE}, "data": encoded})


async def test_timer_collects_agent_status_into_pods_and_ready(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options, aiohttp_agent: int
) -> None:
    await create_secret(k8s, AWS_ACCESS_KEY_ID="AKIAEXAMPLE", AWS_SECRET_ACCESS_KEY=SECRET_VALUE)
    await create(k8s, f"/api/v1/namespaces/{NAMESPACE}/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app-0", "namespace": NAMESPACE, "labels": {"lifeboat.dev/replica": "db"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Running", "podIP": "127.0.0.1"},
    })
    await create(k8s, REPLICAS, make_replica(agent={"metricsPort": aiohttp_agent}, maxLag="30s"))

    def ready() -> dict[str, Any] | None:
        obj = stored(k8s, "lifeboat.dev/v1alpha1/sqlitereplicas", "db")
        return obj if condition(obj, "Ready") and (obj or {}).get("status", {}).get("pods") else None

    # Eventually: kmock never bumps resourceVersion, so the reconcile's and the timer's condition
    # patches are not serialised as on a real API server; the timer's next round converges them.
    replica = await eventually(ready, seconds=handlers.STATUS_INTERVAL + 10)
    assert replica["status"]["pods"] == [{
        "name": "app-0", "txid": "0000000000000012", "remoteTxid": "0000000000000011", "lagSeconds": 0.5,
        "lastSync": "2026-01-01T00:00:00Z", "error": None}]
    assert replica["status"]["txid"] == "0000000000000011"
    assert condition(replica, "Ready")["status"] == "True"
    # The round reads the writer pods from kopf's index, not by listing the replica's pods: the reads of
    # pods are kopf's list-and-watch of the pods carrying the label at all, and the list of this
    # namespace's followers (a second label the one watch's selector cannot take in).
    pods = f"/api/v1/namespaces/{NAMESPACE}/pods"
    pod_reads = [r for r in k8s if r.method == kmock.method.GET and r.url.path == pods]
    assert {r.url.query.get("labelSelector") for r in pod_reads} == {"lifeboat.dev/replica", "lifeboat.dev/follow"}


@pytest.fixture
async def aiohttp_agent() -> Any:
    """A stand-in agent answering ``/status`` on 127.0.0.1; yields its port."""
    async def status(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"databases": [
            {"path": "/other.db", "txid": 1, "remote_txid": 1, "last_sync": None, "lag_seconds": None,
             "error": None},
            {"path": "/data/app.db", "txid": 18, "remote_txid": 17, "last_sync": "2026-01-01T00:00:00Z",
             "lag_seconds": 0.5, "error": None},
        ]})

    app = aiohttp.web.Application()
    app.router.add_get("/status", status)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def test_inconsistent_spec_gets_no_configmap_and_a_false_condition(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options
) -> None:
    # As if applied while the validating webhook was not in place.
    await create(k8s, REPLICAS, make_replica(replica={"url": "gs://bucket/app", "forcePathStyle": True}))

    def config_ready() -> dict[str, Any] | None:
        return condition(stored(k8s, "lifeboat.dev/v1alpha1/sqlitereplicas", "db"), "ConfigReady")

    cond = await eventually(config_ready)
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec")
    assert "replica.forcePathStyle applies to s3://" in cond["message"]
    assert stored(k8s, "v1/configmaps", "db-lifeboat") is None


async def test_a_resume_or_a_spec_change_writes_the_configmap_with_one_patch(
    k8s: kmock.KubernetesEmulator, kubeconfig: None, tls: webhook.TLSBundle, tmp_path: pathlib.Path
) -> None:
    options = handlers.Options(namespaces=(NAMESPACE,), webhook_addr="127.0.0.1", webhook_port=free_port(),
                               tls_dir=tmp_path / "tls", agent_image="lifeboat:test")
    await create(k8s, REPLICAS, make_replica())
    async with running_operator(options):
        await eventually(lambda: stored(k8s, "v1/configmaps", "db-lifeboat"))
    written = stored(k8s, "v1/configmaps", "db-lifeboat")

    def replica_writes(since: int) -> int:
        return len([r for r in list(k8s)[since:] if r.method == kmock.method.PATCH and r.url.path.startswith(
            f"{REPLICAS}/db")])

    def configmap_writes(since: int) -> list[str]:
        return [f"{r.method.name} {r.url.path}" for r in list(k8s)[since:]
                if r.method in (kmock.method.POST, kmock.method.PATCH) and "/configmaps" in r.url.path]

    path = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
    since = len(list(k8s))
    async with running_operator(options):
        # The resume has run once it wrote the SQLiteReplica's status: one patch, no failed create.
        # (A ConfigMap gone meanwhile is created after the patch's 404: test_configmap_write.py, and
        # on the real API server the restart of tests/cluster/test_cluster_scale_smoke.py.)
        await eventually(lambda: replica_writes(since))
        assert configmap_writes(since) == [f"PATCH {path}/db-lifeboat"]
        assert stored(k8s, "v1/configmaps", "db-lifeboat") == written

        since = len(list(k8s))
        await patch(k8s, f"{REPLICAS}/db", {"spec": {"syncInterval": "7s"}})
        await eventually(lambda: "7s" in json.dumps(stored(k8s, "v1/configmaps", "db-lifeboat")))
        assert configmap_writes(since) == [f"PATCH {path}/db-lifeboat"]


async def test_reconciles_make_their_api_calls_a_few_at_a_time(
    k8s: kmock.KubernetesEmulator, kubeconfig: None, tls: webhook.TLSBundle, tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(handlers, "RECONCILE_CONCURRENCY", 2)
    busy, most = 0, 0
    check = credentials.SecretChecks.verdict

    async def slow_check(self: credentials.SecretChecks, namespace: str, spec: Any, *, fresh: bool = False) -> Any:
        """The real check, held long enough for the reconciles of every SQLiteReplica to overlap. Only
        a reconcile asks for a fresh one: the status rounds' checks run beside them, unbounded."""
        nonlocal busy, most
        if not fresh:
            return await check(self, namespace, spec)
        busy += 1
        most = max(most, busy)
        try:
            await asyncio.sleep(0.3)
            return await check(self, namespace, spec, fresh=True)
        finally:
            busy -= 1

    monkeypatch.setattr(credentials.SecretChecks, "verdict", slow_check)
    for index in range(6):
        await create(k8s, REPLICAS, make_replica(f"db{index}"))
    options = handlers.Options(namespaces=(NAMESPACE,), webhook_addr="127.0.0.1", webhook_port=free_port(),
                               tls_dir=tmp_path / "tls", agent_image="lifeboat:test")
    async with running_operator(options):
        await eventually(lambda: all(condition(stored(k8s, "lifeboat.dev/v1alpha1/sqlitereplicas", f"db{index}"),
                                               "CredentialsReady") for index in range(6)), seconds=30)
    assert most == 2
