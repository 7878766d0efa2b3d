"""The few Kubernetes API calls the operator makes beyond what kopf does for it.

The official client is synchronous, so every call runs in a worker thread. Objects travel as plain
dicts (``_preload_content=False``): the operator's logic works on dicts, never on client models.
"""

import asyncio
import concurrent.futures
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes
from kubernetes.client import ApiException
from lifeboat.operator import guards, timeouts
from lifeboat.operator import spec as specs

logger = logging.getLogger(__name__)

# The client would otherwise label a dict body as a JSON patch (its first listed type).
MERGE_PATCH = "application/merge-patch+json"


# The two configurations that carry the webhooks' caBundle.
WEBHOOK_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
# How old a Namespace read for admissions may get before it is read again: its annotations (OpenShift's
# uid range) are set when it is created; a namespace deleted and created again under its name is seen
# by the admissions once the read after this long has returned.
NAMESPACE_TTL = 300.0
# Threads of their own for the reads an admission may make: the status rounds of many SQLiteReplicas
# can keep the event loop's default executor (cores + 4 threads) busy, and an admission queued behind
# them passes the webhook's 5 s timeoutSeconds and the pod is refused.
ADMISSION_THREADS = 4
# How long one list of a namespace's follower pods serves the status rounds of its SQLiteReplicas
# (shorter than a round, so each round sees followers at most one round late).
FOLLOWERS_TTL = 10.0


class Conflict(Exception):
    """The object changed since it was read (its resourceVersion precondition failed)."""


class Forbidden(Exception):
    """The operator's RBAC does not allow the call; the message says what was refused."""


def load_api_client() -> kubernetes.client.ApiClient:
    """An API client from the in-cluster service account, else from the kubeconfig (``$KUBECONFIG``)."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        # Read $KUBECONFIG now: the client library's default was frozen when it was imported.
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"),
                                           client_configuration=configuration)
    return kubernetes.client.ApiClient(configuration)


class Kube:
    """Async wrappers over the calls the operator needs; ``None`` means "not found"."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.admission = kubernetes.client.AdmissionregistrationV1Api(api_client)
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.batch = kubernetes.client.BatchV1Api(api_client)
        self._namespaces: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._namespace_reads: dict[str, asyncio.Task[dict[str, Any] | None]] = {}
        self._admission_pool = concurrent.futures.ThreadPoolExecutor(ADMISSION_THREADS, "admission")
        self._followers: dict[str, tuple[float, list[dict[str, Any]]]] = {}

    async def _call(
        self, fn: Callable[..., Any], *args: Any, admission: bool = False, **kwargs: Any
    ) -> dict[str, Any] | None:
        """``fn(*args, **kwargs)`` in a worker thread (the admission pool for reads an admission waits on)."""
        def call() -> dict[str, Any]:
            response = fn(*args, _preload_content=False, _request_timeout=(timeouts.CONNECT, timeouts.REQUEST),
                          **kwargs)
            return json.loads(response.data or b"{}")

        try:
            return await asyncio.get_running_loop().run_in_executor(self._admission_pool if admission else None, call)
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                raise Forbidden(f"{fn.__name__}: forbidden by RBAC") from exc
            raise

    async def secret_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        """The key names of a Secret (its values are dropped at once), or None when it is missing."""
        secret = await self._call(self.core.read_namespaced_secret, name, namespace)
        if secret is None:
            return None
        return frozenset(secret.get("data") or {}) | frozenset(secret.get("stringData") or {})

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A whole Secret (for the webhook's own TLS material only)."""
        return await self._call(self.core.read_namespaced_secret, name, namespace)

    async def create_secret(self, namespace: str, body: Mapping[str, Any]) -> bool:
        """Create a Secret; False when one of that name already exists (another replica was first)."""
        try:
            await self._call(self.core.create_namespaced_secret, namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def apply_configmap(self, namespace: str, body: Mapping[str, Any], *, exists: bool) -> None:
        """Create the ConfigMap, or bring an existing one to ``body``'s data, labels and owners (merge
        patch): one request when ``exists`` guesses right, two when not. Neither way reads it, so the
        operator needs no read access to ConfigMaps, and a patch that changes nothing writes nothing."""
        name = body["metadata"]["name"]
        if not exists:
            try:
                await self._call(self.core.create_namespaced_config_map, namespace, body)
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
        patched = await self._call(self.core.patch_namespaced_config_map, name, namespace, body,
                                   _content_type=MERGE_PATCH)
        if patched is None:  # not found (`_call` answers a 404 with None): gone, or never created
            await self._call(self.core.create_namespaced_config_map, namespace, body)

    async def running_pods(self, namespace: str, replica_name: str) -> list[dict[str, Any]]:
        """Running pods that carry the replica's label and have an IP to ask their agent at."""
        listing = await self._call(self.core.list_namespaced_pod, namespace,
                                   label_selector=f"{specs.REPLICA_LABEL}={replica_name}")
        pods = (listing or {}).get("items") or []
        return [p for p in pods
                if (p.get("status") or {}).get("phase") == "Running" and (p.get("status") or {}).get("podIP")]

    async def followers(self, namespace: str, replica_name: str) -> list[dict[str, Any]]:
        """The pods following ``replica_name`` (labelled ``lifeboat.dev/follow``).

        One list of the namespace's followers serves every SQLiteReplica's round for ``FOLLOWERS_TTL``:
        a round of each of many SQLiteReplicas would otherwise cost a list each.
        """
        cached = self._followers.get(namespace)
        if cached is None or time.monotonic() - cached[0] >= FOLLOWERS_TTL:
            listing = await self._call(self.core.list_namespaced_pod, namespace, label_selector=specs.FOLLOW_LABEL)
            cached = (time.monotonic(), (listing or {}).get("items") or [])
            self._followers[namespace] = cached
        return [p for p in cached[1] if ((p.get("metadata") or {}).get("labels") or {}).get(specs.FOLLOW_LABEL)
                == replica_name]

    async def labelled_pods(self, namespace: str, label: str, value: str) -> list[dict[str, Any]]:
        """Every pod with ``label=value`` (filtered here too: not every API server honours selectors)."""
        listing = await self._call(self.core.list_namespaced_pod, namespace, label_selector=f"{label}={value}")
        return [p for p in (listing or {}).get("items") or []
                if ((p.get("metadata") or {}).get("labels") or {}).get(label) == value]

    async def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod (its controller recreates it); gone already is fine."""
        await self._call(self.core.delete_namespaced_pod, name, namespace)

    async def workload(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A ReplicaSet, Deployment or StatefulSet by kind and name, or None."""
        read = {"ReplicaSet": self.apps.read_namespaced_replica_set,
                "Deployment": self.apps.read_namespaced_deployment,
                "StatefulSet": self.apps.read_namespaced_stateful_set}[kind]
        return await self._call(read, name, namespace)

    async def owning_workloads(
        self, namespace: str, pods: list[dict[str, Any]]
    ) -> list[tuple[str, dict[str, Any]]]:
        """The Deployments/StatefulSets owning these pods (through ReplicaSets), as (kind, object)."""
        replicasets: dict[str, dict[str, Any]] = {}
        refs: set[tuple[str, str]] = set()
        for pod in pods:
            owner = guards.controller_of(pod)
            if owner and owner[0] == "ReplicaSet" and owner[1] not in replicasets:
                replicasets[owner[1]] = await self.workload("ReplicaSet", namespace, owner[1]) or {}
            ref = guards.workload_ref(pod, replicasets)
            if ref:
                refs.add(ref)
        found = []
        for kind, name in sorted(refs):
            obj = await self.workload(kind, namespace, name)
            if obj is not None:
                found.append((kind, obj))
        return found

    async def scale(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        """Set a Deployment's or StatefulSet's replicas through its ``scale`` subresource."""
        patch = {"Deployment": self.apps.patch_namespaced_deployment_scale,
                 "StatefulSet": self.apps.patch_namespaced_stateful_set_scale}[kind]
        await self._call(patch, name, namespace, {"spec": {"replicas": replicas}}, _content_type=MERGE_PATCH)

    async def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._call(self.batch.read_namespaced_job, name, namespace)

    async def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and (in the background) its pods; gone already is fine."""
        # The API's default for Jobs orphans their pods, which would go on writing.
        await self._call(self.batch.delete_namespaced_job, name, namespace, propagation_policy="Background")

    async def claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A PersistentVolumeClaim, or None."""
        return await self._call(self.core.read_namespaced_persistent_volume_claim, name, namespace)

    async def restores(self, namespace: str) -> list[dict[str, Any]]:
        """The SQLiteRestores of a namespace."""
        listing = await self._call(self.custom.list_namespaced_custom_object,
                                   specs.GROUP, specs.VERSION, namespace, "sqliterestores", admission=True)
        return (listing or {}).get("items") or []

    async def create_job(self, namespace: str, body: Mapping[str, Any]) -> None:
        """Create a Job; one of that name existing already is fine (a retried step)."""
        try:
            await self._call(self.batch.create_namespaced_job, namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    async def namespace(self, name: str) -> dict[str, Any] | None:
        """A Namespace, or None when it is missing or the operator may not read it.

        Every admission of a pod asks, so only the first one in a namespace waits for the API server:
        later ones get the copy read before, which is read again in the background once it is
        ``NAMESPACE_TTL`` old (one read, however many admissions ask meanwhile).
        """
        cached = self._namespaces.get(name)
        if cached is None:
            return await asyncio.shield(self._read_namespace(name))
        if time.monotonic() - cached[0] >= NAMESPACE_TTL:
            self._read_namespace(name)
        return cached[1]

    def _read_namespace(self, name: str) -> asyncio.Task[dict[str, Any] | None]:
        """The read of a Namespace into the cache: the one under way, else a new one."""
        task = self._namespace_reads.get(name)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch_namespace(name), name=f"read Namespace {name}")
            self._namespace_reads[name] = task
            task.add_done_callback(lambda done: self._namespace_read(name, done))
        return task

    async def _fetch_namespace(self, name: str) -> dict[str, Any] | None:
        try:
            found = await self._call(self.core.read_namespace, name, admission=True)
        except Forbidden:
            found = None
        self._namespaces[name] = (time.monotonic(), found)
        return found

    def _namespace_read(self, name: str, task: asyncio.Task[dict[str, Any] | None]) -> None:
        self._namespace_reads.pop(name, None)
        # A first read's failure reaches the admissions awaiting it; a refresh's is only logged.
        failure = None if task.cancelled() else task.exception()
        if failure is not None and name in self._namespaces:
            logger.warning("Cannot read Namespace %s again (%s); admissions use the copy read before.",
                           name, type(failure).__name__)

    async def replica(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The SQLiteReplica of that name, or None."""
        return await self._call(self.custom.get_namespaced_custom_object,
                                specs.GROUP, specs.VERSION, namespace, specs.PLURAL, name, admission=True)

    async def peering(self, group: str, version: str, plural: str, namespace: str | None,
                      name: str) -> dict[str, Any] | None:
        """A kopf peering object (cluster-wide when ``namespace`` is None), or None."""
        if namespace is None:
            return await self._call(self.custom.get_cluster_custom_object, group, version, plural, name)
        return await self._call(self.custom.get_namespaced_custom_object, group, version, namespace, plural, name)

    async def webhook_configuration(self, kind: str, name: str) -> dict[str, Any] | None:
        """A MutatingWebhookConfiguration or ValidatingWebhookConfiguration, or None."""
        read = {WEBHOOK_KINDS[0]: self.admission.read_mutating_webhook_configuration,
                WEBHOOK_KINDS[1]: self.admission.read_validating_webhook_configuration}[kind]
        return await self._call(read, name)

    async def set_ca_bundle(self, kind: str, configuration: Mapping[str, Any], ca_bundle_b64: str) -> None:
        """Put this caBundle into every webhook of ``configuration``, as read (Conflict if it changed since).

        The resourceVersion precondition keeps two replicas from overwriting each other's bundle: the
        loser re-reads and merges.
        """
        fn = {WEBHOOK_KINDS[0]: self.admission.patch_mutating_webhook_configuration,
              WEBHOOK_KINDS[1]: self.admission.patch_validating_webhook_configuration}[kind]
        webhooks = [dict(w, clientConfig={**(w.get("clientConfig") or {}), "caBundle": ca_bundle_b64})
                    for w in configuration.get("webhooks") or []]
        metadata = configuration["metadata"]
        # A JSON merge patch replaces the list anyway; send it whole, as read.
        await self._patch_unchanged(fn, metadata["name"], metadata["resourceVersion"], {"webhooks": webhooks})

    async def patch_secret_unchanged(self, namespace: str, secret: Mapping[str, Any],
                                     patch: Mapping[str, Any]) -> None:
        """Merge-patch a Secret as read (Conflict if it changed since): the webhook's own TLS material."""
        metadata = secret["metadata"]
        await self._patch_unchanged(self.core.patch_namespaced_secret, metadata["name"],
                                    metadata["resourceVersion"], patch, namespace)

    async def _patch_unchanged(self, fn: Callable[..., Any], name: str, resource_version: str,
                               patch: Mapping[str, Any], *args: Any) -> None:
        body = {**patch, "metadata": {**(patch.get("metadata") or {}), "resourceVersion": resource_version}}
        try:
            await self._call(fn, name, *args, body, _content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"{fn.__name__} {name}: changed since it was read") from exc
            raise
