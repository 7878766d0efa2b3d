"""The admission path reads the SQLiteReplica from kopf's index, not from the API server."""

from typing import Any

import kmock
from kube_helpers import NAMESPACE, create, eventually, make_pod, make_replica
from lifeboat.operator import handlers, webhook
from test_operator_webhook import PODS, REPLICAS, call, review


def replica_reads(k8s: kmock.KubernetesEmulator, name: str, since: int) -> list[Any]:
    """The API requests after the first ``since`` that read the SQLiteReplica ``name``."""
    return [r for r in list(k8s)[since:] if r.method == kmock.method.GET and r.url.path == f"{REPLICAS}/{name}"]


async def test_an_indexed_replica_costs_the_webhook_no_api_call(
    k8s: kmock.KubernetesEmulator, operator: handlers.Options, tls: webhook.TLSBundle
) -> None:
    await create(k8s, REPLICAS, make_replica())
    # kopf runs no SQLiteReplica handler before its indexes are filled: once reconciled, it is indexed.
    await eventually(lambda: (k8s.objects["lifeboat.dev/v1alpha1/sqlitereplicas", NAMESPACE, "db"].raw
                              .get("status") or {}).get("configMap"))
    since = len(list(k8s))

    response = await call(operator, tls, "/inject", review(make_pod(), PODS))

    assert response["allowed"] is True, response
    assert replica_reads(k8s, "db", since) == []

