"""The operator-generated webhook certificate on a real API server: rotated under load without a single
denial, and trusted again after its webhook configuration is re-created without a caBundle.

Two replicas run with a test-only one-minute validity (rotation.TEST_VALIDITY_ENV), so they rotate within
the test: the Secret left by earlier tests holds a ten-year certificate, which outlives that policy and is
rotated at once, and every certificate they issue is rotated again after two thirds of its minute.
"""

from __future__ import annotations

import datetime
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from cryptography import x509
from k8s import HELM, OPERATOR_NAMESPACE, RELEASE, WEBHOOK_CONFIGURATION, Cluster, Operator, wait_until
from kubernetes.client import ApiException
from lifeboat.operator import injection, rotation, webhook

NAMESPACE = "certs"
TLS_SECRET = f"{RELEASE}-webhook-tls"
REPLICA = {"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteReplica",
           "metadata": {"name": "db", "namespace": NAMESPACE},
           "spec": {"database": "/data/app.db", "replica": {"url": "s3://backups/certs/db"}}}


def pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"lifeboat.dev/replica": "db"}},
            "spec": {"containers": [{"name": "app", "image": "app:1",
                                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                     "volumes": [{"name": "data", "emptyDir": {}}]}}


def served_certificate(cluster: Cluster) -> str:
    return cluster.secret_data(OPERATOR_NAMESPACE, TLS_SECRET)[webhook.CERT_FILE]


@pytest.fixture
def rotating(operator: Operator, tmp_path: Path) -> Iterator[list[Operator]]:
    """Two replicas with a one-minute certificate validity, instead of the session's operator."""
    cluster = operator.cluster
    if not cluster.exists("namespace", NAMESPACE, NAMESPACE):
        cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.apply(REPLICA)
    operator.stop()
    operator.unroute()
    replicas = [Operator.from_chart(cluster, tmp_path / name, replica=name) for name in ("rot1", "rot2")]
    try:
        for replica in replicas:
            replica.env[rotation.TEST_VALIDITY_ENV] = "60"
            replica.start()
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()
            if cluster.exists("endpointslice", replica.endpoint_slice, OPERATOR_NAMESPACE):
                replica.unroute()
        # The session's operator rotates to a long-lived certificate again before the next test.
        operator.start()
        wait_until(lambda: remaining(served_certificate(cluster)) > datetime.timedelta(days=365), 120,
                   "a long-lived certificate served again")


def remaining(cert_pem: str) -> datetime.timedelta:
    return x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc - datetime.datetime.now(datetime.UTC)


class PodLoop(threading.Thread):
    """Creates labelled pods through the API server, one after the other, recording every refusal."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(daemon=True)
        self.api = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(str(cluster.kubeconfig)))
        self.stop = threading.Event()
        self.created = 0
        self.denials: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            name = f"p{self.created + len(self.denials)}"
            try:
                created = self.api.create_namespaced_pod(NAMESPACE, pod(name))
                assert created.spec.init_containers[0].name == injection.RESTORE_CONTAINER
                self.created += 1
            except ApiException as exc:
                self.denials.append(f"{name}: {exc.status} {exc.body}")
            time.sleep(0.2)


def test_rotation_under_pod_creation_denies_nothing(rotating: list[Operator]) -> None:
    cluster = rotating[0].cluster
    first = served_certificate(cluster)
    loop = PodLoop(cluster)
    loop.start()
    try:
        seen = [first]

        def rotated_twice() -> bool:
            current = served_certificate(cluster)
            if current != seen[-1]:
                seen.append(current)
            return len(seen) >= 3

        wait_until(rotated_twice, 240, "two rotations of the served certificate", interval=1)
        # Every replica serves the Secret's current certificate (reloaded in place, socket kept open).
        for replica in rotating:
            wait_until(lambda r=replica: ssl.get_server_certificate((r.address, r.webhook_port)).strip()
                       == served_certificate(cluster).strip(), 30, f"{replica.replica} serving the new certificate")
        time.sleep(5)  # pods keep coming after the last switch
    finally:
        loop.stop.set()
        loop.join(timeout=30)
    assert loop.created > 0
    assert loop.denials == [], f"{len(loop.denials)} of {loop.created + len(loop.denials)} pods refused"


def test_a_recreated_webhook_configuration_heals(rotating: list[Operator]) -> None:
    """As helm rollback or a GitOps replace does: the configuration comes back as the chart renders it."""
    cluster = rotating[0].cluster
    manifest = cluster.run([str(HELM), "get", "manifest", RELEASE, "-n", OPERATOR_NAMESPACE]).stdout
    (rendered,) = [d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "MutatingWebhookConfiguration"]
    assert "caBundle" not in rendered["webhooks"][0]["clientConfig"]
    cluster.kubectl("delete", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION)
    cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(rendered))

    def trusted() -> bool:
        configuration = cluster.get("mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION)
        return all(w["clientConfig"].get("caBundle") for w in configuration["webhooks"])

    wait_until(trusted, 90, "the operator to put the caBundle back")
    api = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(str(cluster.kubeconfig)))

    refusals: list[str] = []

    def injected() -> bool:
        try:
            created = api.create_namespaced_pod(NAMESPACE, pod(f"healed-{time.monotonic_ns()}"))
        except ApiException as exc:
            refusals.append(f"{exc.status} {exc.body}")
            return False  # the API server may take a moment to follow the configuration
        return created.spec.init_containers[0].name == injection.RESTORE_CONTAINER

    wait_until(injected, 60, f"a pod injected through the healed configuration (refused: {refusals[-1:]})")
