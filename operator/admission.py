"""Pod admission, the mutating webhook's ``/inject``: the injected pod as a JSON patch, or one line why not.

Answered here, not by a kopf handler: kopf's admission machinery builds a cause, selects and invokes
handlers with their full set of arguments and turns the handler's result into a JSON patch by copying
and generically diffing the pod, all on the event loop that also runs the watches and the status
rounds. With 50 reviews in flight, each waits for the others' CPU: what a review costs is what the
API server waits. The webhook server hands a review of ``/inject`` here first
(:class:`lifeboat.operator.webhook.NamespacedWebhookServer`); a review of any other resource, and the
SQLiteRestore validation, still go through kopf.

Fail-closed: whatever goes wrong answers ``allowed: false`` with one line; the API server refuses the pod.
"""

import base64
import hashlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf
import orjson
from kubernetes.client import ApiException
from lifeboat.operator import indexes, injection, leadership, metrics, openshift, patches, restores
from lifeboat.operator import spec as specs

logger = logging.getLogger(__name__)

# The webhook id of pod injection: the path the chart's MutatingWebhookConfiguration calls.
POD_WEBHOOK = "inject"
PODS = {"group": "", "version": "v1", "resource": "pods"}
# Answers kept for pods arriving again alike: one per pod template being rolled out, a few kB each.
ANSWERS_KEPT = 1024


class PodAdmission:
    """Admits labelled pods with the agent injected, from the operator's indexes where they are live.

    ``memo`` is the operator's: its ``kube`` and ``lead`` are set by startup handlers, and read here
    per review.
    """

    def __init__(self, memo: kopf.Memo, replica_index: kopf.Index[indexes.ReplicaKey, dict[str, Any]],
                 restore_index: kopf.Index[str, dict[str, Any]]) -> None:
        self.memo = memo
        self.replica_index = replica_index
        self.restore_index = restore_index
        self.answers = Answers()

    async def review(self, review: Mapping[str, Any]) -> dict[str, Any] | None:
        """The AdmissionReview answering ``review``; None when it is not about a pod (kopf answers it)."""
        request = review.get("request") or {}
        if request.get("resource") != PODS:
            return None
        start = time.perf_counter()
        response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": True}
        try:
            response |= await self._admit(request)
        except kopf.AdmissionError as exc:
            logger.warning("Refused a pod in namespace %s: %s", request.get("namespace"), exc)
            response |= {"allowed": False, "status": {"message": str(exc), "code": exc.code}}
        except Exception as exc:  # fail-closed: a pod this webhook could not judge does not start
            message = f"lifeboat webhook could not judge the pod: {one_line(exc)}"
            logger.error("Pod in namespace %s: %s", request.get("namespace"), message)
            response |= {"allowed": False, "status": {"message": message, "code": 500}}
        finally:
            metrics.ADMISSION_SECONDS.observe(time.perf_counter() - start)
        return {"apiVersion": review.get("apiVersion", "admission.k8s.io/v1"), "kind": "AdmissionReview",
                "response": response}

    async def _admit(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``patch`` and ``warnings`` for an admitted pod (none for a pod that wants nothing);
        raises :class:`kopf.AdmissionError` for a refused one."""
        pod = request.get("object")
        # Only new pods are injected: the chart sends nothing else, and a running pod cannot change containers.
        if request.get("operation") != "CREATE" or request.get("subResource") or not isinstance(pod, dict):
            return {}
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if not injection.wants_injection(labels):
            return {}
        # Pods created by controllers arrive without metadata.namespace; the request carries it.
        namespace = request.get("namespace") or pod["metadata"].get("namespace") or ""
        replica, follower, uid = await self._target(pod, namespace, labels)
        # The answer is a function of these alone, and the pods of one ReplicaSet arrive identical.
        key = (hashlib.blake2b(orjson.dumps(pod) + orjson.dumps(replica), digest_size=16).digest(), follower, uid)
        answer = self.answers.get(key)
        if answer is None:
            answer = self._answer(pod, namespace, replica, follower, uid)
            self.answers.put(key, answer)
        metrics.INJECTIONS.labels(namespace, replica["metadata"]["name"]).inc()
        return answer

    async def _target(self, pod: Mapping[str, Any], namespace: str,
                      labels: Mapping[str, str]) -> tuple[dict[str, Any], bool, int | None]:
        """The pod's SQLiteReplica, whether the pod follows it, and the namespace's OpenShift uid.

        A pod naming no SQLiteReplica is refused with HTTP 400 (the request is wrong, not the webhook);
        one whose in-place restore runs, with 403.
        """
        try:
            replica_name, follower = injection.target(labels)
        except injection.InjectionError as exc:
            metrics.DENIALS.labels(namespace).inc()
            raise kopf.AdmissionError(str(exc), code=400) from exc
        label = specs.FOLLOW_LABEL if follower else specs.REPLICA_LABEL
        # Indexes where this replica's watches run (it leads); the API server where they are paused.
        lead: leadership.Lead = self.memo.lead
        trusted = lead.trusted
        lifeboat = self.memo.kube
        replica = await indexes.find_replica(lifeboat, self.replica_index, namespace, replica_name, trusted=trusted)
        if replica is None:
            metrics.DENIALS.labels(namespace).inc()
            raise kopf.AdmissionError(
                f"pod label {label}={replica_name} names no SQLiteReplica in namespace "
                f"{namespace}: create the SQLiteReplica first, or fix the label", code=400)
        refusal = restores.pod_refusal(
            await indexes.restores(lifeboat, self.restore_index, namespace, trusted=trusted), replica_name)
        if refusal:
            metrics.DENIALS.labels(namespace).inc()
            raise kopf.AdmissionError(refusal, code=403)
        return replica, follower, openshift.first_uid(await lifeboat.namespace(namespace))

    def _answer(self, pod: dict[str, Any], namespace: str, replica: Mapping[str, Any], follower: bool,
                uid: int | None) -> dict[str, Any]:
        """The JSON patch injecting the pod with the restore init container and the agent (or, for a
        follower, the follow sidecar) per its SQLiteReplica, and the warnings for its creator.

        A pod that cannot be injected is refused with HTTP 400.
        """
        options = self.memo.options
        replica_name = replica["metadata"]["name"]
        try:
            injected = injection.inject(pod, replica, native_sidecar=options.native_sidecar,
                                        default_image=options.agent_image, follower=follower)
        except injection.InjectionError as exc:
            metrics.DENIALS.labels(namespace).inc()
            raise kopf.AdmissionError(f"SQLiteReplica {replica_name}: {exc}", code=400) from exc
        if uid is not None:
            openshift.follow_uid_range(injected, uid)
        warnings = [f"SQLiteReplica {replica_name}: {w}" for w in injection.warnings(pod, replica)]
        ops = patches.diff(pod, injected)
        answer: dict[str, Any] = {"warnings": warnings} if warnings else {}
        if ops:
            answer |= {"patchType": "JSONPatch", "patch": base64.b64encode(orjson.dumps(ops)).decode()}
        return answer


class Answers:
    """The latest admission answers by what they are computed from, the oldest forgotten first.

    The pods a ReplicaSet creates reach the webhook as one and the same object (the API server
    generates their names after mutating admission), so a rollout or a scale-up computes its injection
    once. An answer is never stale: its key is a digest of the whole pod and the whole SQLiteReplica as
    admitted.
    """

    def __init__(self, limit: int = ANSWERS_KEPT) -> None:
        self.limit = limit
        self._answers: dict[tuple[Any, ...], dict[str, Any]] = {}

    def get(self, key: tuple[Any, ...]) -> dict[str, Any] | None:
        """The answer kept for ``key``, or None."""
        return self._answers.get(key)

    def put(self, key: tuple[Any, ...], answer: dict[str, Any]) -> None:
        """Keep ``answer`` for ``key``, forgetting the oldest beyond the limit."""
        self._answers[key] = answer
        if len(self._answers) > self.limit:
            del self._answers[next(iter(self._answers))]


def one_line(exc: BaseException) -> str:
    """What went wrong, on one line: an API error by its status, not its headers and body."""
    if isinstance(exc, ApiException):
        return f"Kubernetes API answered {exc.status} {exc.reason}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
