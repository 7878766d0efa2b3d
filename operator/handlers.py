"""kopf handlers: translate between Kubernetes and the pure functions of this package.

* SQLiteReplica create/update/resume → the agent ConfigMap (owned by the replica), the Secret check,
  ``ConfigReady`` and ``CredentialsReady`` conditions and Events;
* a timer → every labelled pod's agent ``/status`` into ``status.pods`` and the ``Ready`` condition, and
  its restore init container's failure into the ``Restored`` condition;
* admission: pods are mutated by :func:`lifeboat.operator.injection.inject`, answered without a kopf handler
  (:mod:`lifeboat.operator.admission`) on the webhook server set up here. SQLiteReplicas are validated
  by the CRD's schema alone (its CEL rules): a validating webhook would refuse every update of an object
  stored before a rule was tightened, even the one that removes its finalizer while it is deleted.

SQLiteRestores are handled in :mod:`lifeboat.operator.restores`, verification restores
(``spec.verify``) in :mod:`lifeboat.operator.verify` (both imported here, so their handlers register
with these).

Every handler is idempotent: it recomputes the whole desired state from the object it is given.
"""

import asyncio
import dataclasses
import logging
import os
import pathlib
import random
from collections.abc import Mapping
from typing import Any

import kopf
from lifeboat.operator import (
    admission,
    agent_config,
    credentials,
    guards,
    indexes,  # also registers the indexes
    injection,
    kube,
    leadership,  # noqa: F401 - registers its startup handlers
    metrics,
    restores,  # noqa: F401 - registers the SQLiteRestore handlers
    rotation,
    uninstall,
    verify,  # noqa: F401 - registers the verification timer
    webhook,
)
from lifeboat.operator import spec as specs
from lifeboat.operator import status as statuses

CONFIG_READY = "ConfigReady"
CREDENTIALS_READY = "CredentialsReady"
READY = "Ready"
CONFIG_APPLIED = "ConfigApplied"
RESTORED = "Restored"
# A condition's (status, reason, message).
Verdict = tuple[str, str, str]
# Test-only: the cluster tests shorten the status round to see several within a test's time.
TEST_STATUS_INTERVAL_ENV = "LIFEBOAT_TEST_STATUS_INTERVAL"
STATUS_INTERVAL = float(os.environ.get(TEST_STATUS_INTERVAL_ENV) or 15.0)
# How many SQLiteReplicas' reconciles make their API calls at once. A restart or a new leader resumes
# every SQLiteReplica together; their calls share the event loop's default executor (cores + 4 threads,
# at least 5) with the status rounds and the restores. Fewer than that many keeps a thread free for
# those, instead of queueing them behind a thousand resumes. kopf's settings.queueing.worker_limit is
# not the bound to use: it counts the workers of every watched kind, idle ones included (each lingers
# for idle_timeout after its last event), so the 5,000 pod events of the first listing would trickle
# through it, and kopf runs no handler before every index is filled.
RECONCILE_CONCURRENCY = 4


@dataclasses.dataclass(frozen=True)
class Options:
    """What the operator is told on its command line (see :mod:`lifeboat.operator.main`)."""

    namespaces: tuple[str, ...] = ()  # empty: every namespace
    webhook_addr: str = "0.0.0.0"
    webhook_port: int = 9443
    tls_dir: pathlib.Path = pathlib.Path("/run/lifeboat/tls")
    tls_secret: str | None = None  # set: the operator generates and keeps the certificate in this Secret
    operator_namespace: str | None = None
    service_name: str = "lifeboat-webhook"
    mutating_webhook: str = "lifeboat"
    validating_webhook: str = "lifeboat"
    agent_image: str = injection.DEFAULT_IMAGE
    native_sidecar: bool = True
    metrics_port: int | None = None  # the operator's own /metrics; None: not served
    metrics_addr: str = "0.0.0.0"


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The same sources as :func:`kube.load_api_client`: the service account, else ``$KUBECONFIG``.

    kopf's client-library login reads the kubeconfig path frozen at import time; these read it now.
    """
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger,
    replica_index: kopf.Index[indexes.ReplicaKey, dict[str, Any]], restore_index: kopf.Index[str, dict[str, Any]],
    **_: Any,
) -> None:
    """Settings, the API client, and the webhook server with its certificate.

    The indexes are kopf's own objects, empty now and filled in place by its watches: the pod
    admission keeps them.
    """
    options: Options = memo.options
    # kopf's own bookkeeping goes into annotations: the status schema is structural and would prune it.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=specs.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=specs.GROUP)
    # The status timer needs a finalizer (kopf stops it before the object goes); name it as ours. The
    # chart's post-delete hook removes it once the operator is uninstalled (lifeboat.operator.uninstall).
    settings.persistence.finalizer = uninstall.FINALIZER
    # Events for warnings and our own explicit ones; not one per successful handler run.
    settings.posting.level = logging.WARNING
    # Exact namespaces need no namespace scanning; the chart installs the CRD before the operator.
    settings.scanning.disabled = bool(options.namespaces)
    # The chart owns the webhook configurations (namespaceSelector, reinvocation, timeout, Service ref).
    settings.admission.managed = None
    indexes.configure_watches(settings)

    memo.kube = kube.Kube(kube.load_api_client())
    memo.secrets = credentials.SecretChecks(memo.kube)
    memo.reconciles = asyncio.Semaphore(RECONCILE_CONCURRENCY)
    if options.tls_secret:
        if not options.operator_namespace:
            raise kopf.PermanentError("--tls-secret needs the operator's namespace (--operator-namespace)")
        keeper = rotation.Keeper(
            memo.kube, options.operator_namespace, options.tls_secret,
            webhook.service_dns_names(options.service_name, options.operator_namespace),
            {kube.WEBHOOK_KINDS[0]: options.mutating_webhook, kube.WEBHOOK_KINDS[1]: options.validating_webhook},
            options.tls_dir)
        tls = await keeper.start()
        memo.certificate_rounds = asyncio.create_task(keeper.run(), name="webhook certificate")
    else:
        tls = webhook.ReloadingTLS(options.tls_dir / webhook.CERT_FILE, options.tls_dir / webhook.KEY_FILE)
        memo.certificate_rounds = asyncio.create_task(webhook.reload_forever(tls), name="webhook certificate")
    pods = admission.PodAdmission(memo, replica_index, restore_index)
    # aiohttp's access log would write a line per admission, about 7% of the webhook's CPU per pod:
    # refusals are logged, and the API server's audit log has every call.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    settings.admission.server = webhook.NamespacedWebhookServer(
        reviewers={admission.POD_WEBHOOK: pods.review},
        addr=options.webhook_addr, port=options.webhook_port, **tls.server_kwargs())
    logger.info("Serving admission webhooks on %s:%d.", options.webhook_addr, options.webhook_port)
    if options.metrics_port:
        memo.metrics_server = metrics.serve(options.metrics_port, options.metrics_addr)
        logger.info("Serving operator metrics on %s:%d.", options.metrics_addr, options.metrics_port)


@kopf.on.cleanup()
async def stop_background(memo: kopf.Memo, **_: Any) -> None:
    """Stop the certificate rounds and the metrics server."""
    rounds = getattr(memo, "certificate_rounds", None)
    if rounds is not None:
        rounds.cancel()
    server = getattr(memo, "metrics_server", None)
    if server is not None:
        server.shutdown()
        server.server_close()


def configmap_body(name: str, namespace: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The ConfigMap holding the agent config for the SQLiteReplica ``name``."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": specs.configmap_name(name),
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "lifeboat-operator", specs.REPLICA_LABEL: name},
        },
        "data": {agent_config.CONFIG_FILE: agent_config.render(spec)},
    }


def _config_verdict(name: str, spec: Mapping[str, Any]) -> Verdict:
    found = specs.problems(spec)
    if found:
        return "False", "InvalidSpec", "; ".join(found)
    return "True", "Rendered", f"agent config in ConfigMap {specs.configmap_name(name)}"


@kopf.on.resume(specs.GROUP, specs.VERSION, specs.PLURAL)
@kopf.on.create(specs.GROUP, specs.VERSION, specs.PLURAL)
@kopf.on.update(specs.GROUP, specs.VERSION, specs.PLURAL)
@metrics.counted("reconcile")
async def reconcile(
    body: kopf.Body, spec: kopf.Spec, name: str, namespace: str, meta: kopf.Meta,
    patch: kopf.Patch, memo: kopf.Memo, reason: kopf.Reason, **_: Any,
) -> None:
    """Render the agent ConfigMap and check the credentials Secret; report both as conditions.

    A resume or an update patches the ConfigMap (created if it is gone): one request, and none
    written where nothing changed, for each of the SQLiteReplicas a restart or a new leader resumes at
    once. At most ``RECONCILE_CONCURRENCY`` reconciles make their API calls at once.
    """
    generation = meta.get("generation")
    config = _config_verdict(name, spec)
    async with memo.reconciles:
        if config[0] == "True":
            configmap = configmap_body(name, namespace, spec)
            kopf.adopt(configmap, owner=body)
            await memo.kube.apply_configmap(namespace, configmap, exists=reason != kopf.Reason.CREATE)
        # A created or changed spec reads its Secret now; a resume too (the operator knows none yet).
        secret = await memo.secrets.verdict(namespace, spec, fresh=True)
    for verdict in (config, secret):
        if verdict[0] == "False":
            kopf.event(body, type="Warning", reason=verdict[1], message=verdict[2])

    statuses.patch_conditions(patch, {CONFIG_READY: config, CREDENTIALS_READY: secret}, generation)
    patch.status["observedGeneration"] = generation
    patch.status["configMap"] = specs.configmap_name(name)


def status_delay(**_: Any) -> float:
    """The first round's delay: random within one interval, so that the rounds of many
    SQLiteReplicas (all resumed at once when the operator starts or takes the lead) do not hit the
    API server in one burst every interval."""
    return random.uniform(0, STATUS_INTERVAL)


@kopf.timer(specs.GROUP, specs.VERSION, specs.PLURAL, interval=STATUS_INTERVAL, initial_delay=status_delay)
@metrics.counted("collect_status")
async def collect_status(
    body: kopf.Body, spec: kopf.Spec, name: str, namespace: str, meta: kopf.Meta, patch: kopf.Patch,
    memo: kopf.Memo, logger: logging.Logger, pod_index: kopf.Index[indexes.ReplicaKey, dict[str, Any]],
    replicaset_index: indexes.ByName, deployment_index: indexes.ByName,
    statefulset_index: indexes.ByName, **_: Any,
) -> None:
    """Ask every running labelled pod's agent for its state; Ready = all replicate within maxLag.

    It also re-derives the other conditions, so they heal without a spec change (e.g. a Secret
    created after its SQLiteReplica), checks the single-writer guards (``SingleWriter``) and the
    labelled pods that escaped injection (``Injected``; deleted when ``spec.recreateUninjected``).
    """
    labelled = indexes.labelled_pods(pod_index, namespace, name)
    pods = [p for p in labelled if statuses.running(p)]
    port = int((spec.get("agent") or {}).get("metricsPort", specs.DEFAULT_METRICS_PORT))
    summary = statuses.summarize(await statuses.collect(pods, port), database=spec["database"])
    # Followers are listed, not indexed: one label selector cannot watch pods of either label, and a
    # watch of every pod would cost far more than one list of a namespace's followers per round.
    followers = [p for p in await memo.kube.followers(namespace, name) if statuses.running(p)]
    summary.update(statuses.summarize_followers(await statuses.collect(followers, port, followers=True)))

    workloads = indexes.owning_workloads(namespace, labelled, replicaset_index, deployment_index, statefulset_index)
    single_writer = guards.single_writer(labelled, workloads)
    metrics.SINGLE_WRITER_VIOLATIONS.labels(namespace, name).set(single_writer[0] == "False")
    missing = guards.uninjected(labelled)
    injected, delete, _keep = guards.drift(missing, recreate=bool(spec.get("recreateUninjected")))
    metrics.UNINJECTED_PODS.labels(namespace, name).set(len(missing))
    for pod_name in delete:
        logger.info("Deleting pod %s: it carries the replica label but runs no agent.", pod_name)
        await memo.kube.delete_pod(namespace, pod_name)
    fields = {**summary, "uninjectedPods": sorted(p["metadata"]["name"] for p in missing)}

    verdicts = {
        CONFIG_READY: _config_verdict(name, spec),
        CREDENTIALS_READY: await memo.secrets.verdict(namespace, spec),
        READY: statuses.readiness(summary["pods"], specs.max_lag_seconds(spec)),
        CONFIG_APPLIED: statuses.config_applied(summary["pods"]),
        RESTORED: statuses.restore_verdict(labelled),
        guards.SINGLE_WRITER: single_writer,
        guards.INJECTED: injected,
    }
    # An Event when a guard turns False (or its message changes), not on every round.
    previous = {c.get("type"): c for c in (body.get("status") or {}).get("conditions") or []}
    for type_ in (guards.SINGLE_WRITER, guards.INJECTED, CONFIG_APPLIED, RESTORED):
        status_, reason, message = verdicts[type_]
        before = previous.get(type_) or {}
        if status_ == "False" and (before.get("status"), before.get("message")) != (status_, message):
            kopf.event(body, type="Warning", reason=reason, message=message)
    # A round that finds nothing new writes nothing: no API call, and no watch event to every
    # client of SQLiteReplicas. Conditions are compared as this round would set them.
    current = body.get("status") or {}
    conditions = statuses.set_conditions(current.get("conditions") or [], verdicts,
                                         generation=meta.get("generation"), now=statuses.now_rfc3339())
    if not statuses.changes(current, {**fields, "conditions": conditions}):
        return
    patch.status.update(fields)
    statuses.patch_conditions(patch, verdicts, meta.get("generation"))
