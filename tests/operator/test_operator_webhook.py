"""The admission webhooks through their real HTTPS endpoint, as an API server calls them."""

import base64
import copy
import pathlib
import ssl
import uuid
from typing import Any

import aiohttp
import jsonpatch
import kmock
from kube_helpers import NAMESPACE, create, free_port, make_pod, make_replica, running_operator
from lifeboat.operator import handlers, injection, webhook

REPLICAS = f"/apis/lifeboat.dev/v1alpha1/namespaces/{NAMESPACE}/sqlitereplicas"


def review(obj: dict[str, Any], resource: dict[str, str], operation: str = "CREATE") -> dict[str, Any]:
    """An AdmissionReview request as the API server sends it (namespace only in the request)."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": resource["group"], "version": resource["version"], "kind": obj["kind"]},
            "resource": resource,
            "namespace": NAMESPACE,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
        },
    }


PODS = {"group": "", "version": "v1", "resource": "pods"}


async def call(options: handlers.Options, tls: webhook.TLSBundle, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST over HTTPS, trusting only the test CA and checking the host name, like an API server."""
    context = ssl.create_default_context(cadata=tls.ca.decode())
    async with aiohttp.ClientSession() as session, session.post(
        f"https://127.0.0.1:{options.webhook_port}{path}", json=body, ssl=context
    ) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
    assert answer["response"]["uid"] == body["request"]["uid"]
    return answer["response"]


async def test_labelled_pod_gets_a_patch_that_yields_the_injected_pod(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options, tls: webhook.TLSBundle
) -> None:
    replica = make_replica()
    await create(k8s, REPLICAS, replica)
    pod = make_pod()

    response = await call(operator, tls, "/inject", review(copy.deepcopy(pod), PODS))

    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patch = jsonpatch.JsonPatch.from_string(base64.b64decode(response["patch"]).decode())
    patched = patch.apply(pod)
    expected = injection.inject(pod, replica, native_sidecar=True, default_image=operator.agent_image)
    assert patched == expected
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["lifeboat-restore", "lifeboat-agent"]
    assert patched["spec"]["initContainers"][1]["image"] == "lifeboat:test"
    assert "namespace" not in patched["metadata"]  # the webhook never adds what the API server fills in


async def test_operator_generates_its_certificate_secret_and_publishes_the_ca(
    k8s: kmock.KubernetesEmulator, kubeconfig: None, tmp_path: pathlib.Path
) -> None:
    for kind in ("mutating", "validating"):
        await create(k8s, f"/apis/admissionregistration.k8s.io/v1/{kind}webhookconfigurations", {
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": f"{kind.title()}WebhookConfiguration",
            "metadata": {"name": "lifeboat"},
            "webhooks": [{"name": f"{kind}.lifeboat.dev", "clientConfig": {"service": {
                "name": "lifeboat-webhook", "namespace": "lifeboat-system", "path": "/inject"}}}]})
    options = handlers.Options(
        namespaces=(NAMESPACE,), webhook_addr="127.0.0.1", webhook_port=free_port(), tls_dir=tmp_path / "gen",
        tls_secret="lifeboat-webhook-tls", operator_namespace="lifeboat-system")

    async with running_operator(options):
        secret = k8s.objects["v1/secrets", "lifeboat-system", "lifeboat-webhook-tls"].raw
        ca = base64.b64decode(secret["data"]["ca.crt"])
        for kind in ("mutating", "validating"):
            config = k8s.objects[f"admissionregistration.k8s.io/v1/{kind}webhookconfigurations", None,
                                 "lifeboat"].raw
            assert base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"]) == ca
            assert config["webhooks"][0]["clientConfig"]["service"]["path"] == "/inject"
        # The server presents the Secret's certificate, valid for the Service's DNS names.
        served = ssl.get_server_certificate(("127.0.0.1", options.webhook_port))
        assert served.encode() == (tmp_path / "gen" / "tls.crt").read_bytes()
        assert served.encode() == base64.b64decode(secret["data"]["tls.crt"])
