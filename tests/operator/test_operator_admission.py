"""The pod webhook, answered without kopf's handler machinery: the answers it gave before, each one timed."""

import json
import ssl

import aiohttp
import kmock
from kube_helpers import NAMESPACE, create, make_pod, make_replica
from lifeboat.operator import handlers, metrics, webhook
from test_operator_webhook import PODS, REPLICAS, call, review


def timed() -> float:
    return metrics.REGISTRY.get_sample_value("lifeboat_operator_admission_seconds_count") or 0.0


async def test_every_pod_admission_is_timed(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options, tls: webhook.TLSBundle
) -> None:
    await create(k8s, REPLICAS, make_replica())
    before = timed()

    assert (await call(operator, tls, "/inject", review(make_pod(), PODS)))["allowed"] is True
    refused = await call(operator, tls, "/inject", review(make_pod(replica="missing"), PODS))

    assert refused["allowed"] is False
    assert refused["status"]["code"] == 400
    assert "names no SQLiteReplica" in refused["status"]["message"]
    assert timed() == before + 2


async def test_pods_that_ask_for_nothing_are_admitted_as_sent(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options, tls: webhook.TLSBundle
) -> None:
    await create(k8s, REPLICAS, make_replica())
    unlabelled = make_pod()
    del unlabelled["metadata"]["labels"]["lifeboat.dev/replica"]

    for request in (review(unlabelled, PODS), review(make_pod(), PODS, operation="UPDATE")):
        response = await call(operator, tls, "/inject", request)
        assert response["allowed"] is True, response
        assert "patch" not in response


async def test_a_failed_read_refuses_the_pod_with_one_line(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options, tls: webhook.TLSBundle
) -> None:
    await create(k8s, REPLICAS, make_replica())
    # The Namespace (OpenShift's uid range) cannot be read: the pod is not admitted uninjected.
    k8s[f"get /api/v1/namespaces/{NAMESPACE}"].override << 500

    response = await call(operator, tls, "/inject", review(make_pod(), PODS))

    assert response["allowed"] is False
    assert response["status"]["code"] == 500
    message = response["status"]["message"]
    assert "\n" not in message
    assert "500" in message, message


async def post(options: handlers.Options, tls: webhook.TLSBundle, path: str, body: bytes) -> tuple[int, str]:
    """POST raw bytes over HTTPS as an API server would; the HTTP status and reason."""
    context = ssl.create_default_context(cadata=tls.ca.decode())
    async with aiohttp.ClientSession() as session, session.post(
        f"https://127.0.0.1:{options.webhook_port}{path}", data=body, ssl=context
    ) as response:
        return response.status, response.reason or ""


async def test_a_body_that_is_no_json_is_answered_400_naming_it(
    operator: handlers.Options, tls: webhook.TLSBundle
) -> None:
    # The API server counts the call as failed: with failurePolicy Fail, the pod is refused.
    status, reason = await post(operator, tls, "/inject", b'{"request": ')

    assert status == 400
    assert "AdmissionReview is no JSON" in reason, reason


async def test_a_review_of_another_resource_on_the_pod_path_goes_to_kopf(
    operator: handlers.Options, tls: webhook.TLSBundle
) -> None:
    # kopf reads the body the pod path decoded already, and answers as it does for a resource it
    # has no handler for.
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}}
    body = review(configmap, {"group": "", "version": "v1", "resource": "configmaps"})
    status, reason = await post(operator, tls, "/inject", json.dumps(body).encode())

    assert status == 404
    assert "configmaps" in reason, reason
