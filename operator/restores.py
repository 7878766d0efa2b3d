"""SQLiteRestore: restore a SQLiteReplica's backup on demand, in place or into another PVC.

In place, the restore walks ``Pending → ScalingDown → Restoring → ScalingUp → Succeeded`` (or
``Failed``): the owning Deployment/StatefulSet's replica count is recorded in the status *before*
it is scaled to 0; once its pods are gone a Job runs ``lifeboat restore -force`` on the same volume,
with the replica's ConfigMap and Secret and the agent's image; then the workload goes back to the
recorded count. Into a PVC (``target: {pvc: NAME}``) only the Job runs, and the app is left alone.

Every step is decided by :func:`advance`, a pure function of the phase, the spec, the status and
what the handler observed; its actions are idempotent (scale to a count, create a Job of a fixed
name), so a step repeated after an operator restart or a failed status patch does no harm, and the
state needed to go on (phase, workload and original replicas, volume, Job) lives in the status.
"""

import copy
import dataclasses
import datetime
import json
import logging
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
from lifeboat.operator import agent_config, guards, injection, kube, metrics, names
from lifeboat.operator import spec as specs
from lifeboat.operator import status as statuses

PLURAL = "sqliterestores"
KIND = "SQLiteRestore"
RESTORE_LABEL = "lifeboat.dev/restore"
JOB_NAME_LABEL = "job-name"  # set on a Job's pods by the Job controller
CONTAINER = "lifeboat-restore"
DATA_VOLUME = "lifeboat-data"
TERMINATION_LOG = "/dev/termination-log"
INTERVAL = 2.0
# Pods that outlive this (a finalizer, a node gone NotReady) fail the restore and the app is scaled
# back, rather than leaving it at 0 replicas indefinitely.
DEFAULT_STOP_TIMEOUT_SECONDS = 300
# The Job's activeDeadlineSeconds, and how long the operator lets RESTORING last before it stops the
# Job and scales the app back: a Job that never gets a pod (an unschedulable node, a missing image or
# ServiceAccount) would otherwise leave the app at 0 replicas for good.
DEFAULT_RESTORE_TIMEOUT_SECONDS = 3600
# What the restore Job's pod takes over from the workload's pod template, so that it runs with the
# app's cloud identity (IRSA, Workload Identity), pulls from its registry and lands where it may.
POD_FIELDS = ("serviceAccountName", "imagePullSecrets", "nodeSelector", "tolerations", "affinity",
              "priorityClassName")
# Access modes that tie a volume to one node: the Job is pinned to the node the app ran on.
SINGLE_NODE_ACCESS = frozenset({"ReadWriteOnce", "ReadWriteOncePod"})

PENDING, SCALING_DOWN, RESTORING, SCALING_UP = "Pending", "ScalingDown", "Restoring", "ScalingUp"
SUCCEEDED, FAILED = "Succeeded", "Failed"
TERMINAL = frozenset({SUCCEEDED, FAILED})

# Conditions.
WORKLOAD_IDENTIFIED = "WorkloadIdentified"
VOLUME_RETAINED = "VolumeRetained"
RESTORED = "Restored"
VERIFIED = "Verified"
COMPLETE = "Complete"

# `lifeboat restore -json` prints one line; the shell keeps it as the termination message (read by
# the operator from the pod status) and in the log. On failure stdout is empty, and the kubelet
# falls back to the log's tail (the error), per terminationMessagePolicy: FallbackToLogsOnError.
SCRIPT = 'lifeboat "$@" > "$LIFEBOAT_RESULT"; code=$?; cat "$LIFEBOAT_RESULT"; exit $code'


# --- pure: spec, Job, results ----------------------------------------------------------------------

def target(spec: Mapping[str, Any]) -> tuple[str, str | None]:
    """("inPlace", None) or ("pvc", claim name)."""
    value = spec.get("target", "inPlace")
    if isinstance(value, Mapping) and isinstance(value.get("pvc"), str) and value["pvc"]:
        return "pvc", value["pvc"]
    return ("inPlace", None) if value in ("inPlace", {"inPlace": {}}) else ("invalid", None)


def problems(spec: Mapping[str, Any]) -> list[str]:
    found = []
    if not spec.get("replica"):
        found.append("spec.replica must name a SQLiteReplica in this namespace")
    if target(spec)[0] == "invalid":
        found.append(f"spec.target {spec.get('target')!r}: expected inPlace or {{pvc: CLAIM_NAME}}")
    if spec.get("timestamp") and spec.get("txid"):
        found.append("spec.timestamp and spec.txid are exclusive: pick one point in time")
    for key, default in (("stopTimeoutSeconds", DEFAULT_STOP_TIMEOUT_SECONDS),
                         ("restoreTimeoutSeconds", DEFAULT_RESTORE_TIMEOUT_SECONDS)):
        timeout = spec.get(key, default)
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
            found.append(f"spec.{key} {timeout!r}: expected a whole number of seconds >= 1")
    return found


def _parse_time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _timestamp(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _elapsed(status: Mapping[str, Any], key: str, now: datetime.datetime) -> float | None:
    started = status.get(key)
    return (now - _parse_time(started)).total_seconds() if started else None


def job_name(restore_name: str) -> str:
    # The Job controller copies the Job's name into its pods' labels: at most 63 characters.
    return names.bounded(restore_name, suffix="-restore")


def restore_args(spec: Mapping[str, Any], database: str) -> list[str]:
    """The ``lifeboat restore`` arguments for a SQLiteRestore spec."""
    args = ["restore", "-force", "-json", "-integrity-check", "full" if spec.get("verify") else "none"]
    if spec.get("timestamp"):
        args += ["-timestamp", spec["timestamp"]]
    elif spec.get("txid"):
        args += ["-txid", spec["txid"]]
    return [*args, "-config", agent_config.CONFIG_PATH, database]


def volume_for(
    kind: str, workload: Mapping[str, Any], replica_spec: Mapping[str, Any]
) -> dict[str, Any]:
    """Where the database lives in the workload's pods: {volume, mount, podSecurityContext, app}.

    Raises :class:`injection.InjectionError` when the template has no volume holding it.
    """
    spec = workload.get("spec") or {}
    template = copy.deepcopy((spec.get("template") or {}).get("spec") or {})
    # The pods run the injected containers; the app is one of the template's own.
    app = injection._app_container(template, replica_spec)
    mount = injection._longest_mount(app, replica_spec["database"])
    if mount is None:
        raise injection.InjectionError(f"database {replica_spec['database']} is on no volume of the pod template")
    volume = next((v for v in template.get("volumes") or [] if v.get("name") == mount["name"]), None)
    if volume is None and kind == "StatefulSet":
        for claim in spec.get("volumeClaimTemplates") or []:
            if claim["metadata"]["name"] == mount["name"]:
                # Pod 0's claim: the one writer of a single-replica StatefulSet.
                volume = {"name": mount["name"], "persistentVolumeClaim": {
                    "claimName": f"{mount['name']}-{workload['metadata']['name']}-0"}}
    if volume is None:
        raise injection.InjectionError(f"volume {mount['name']!r} holding {replica_spec['database']} is not "
                                       f"defined by {kind} {workload['metadata']['name']}")
    keep = ("mountPath", "subPath", "subPathExpr")
    return {
        "volume": {**volume, "name": DATA_VOLUME},
        "mount": {"name": DATA_VOLUME, **{k: mount[k] for k in keep if k in mount}},
        "podSecurityContext": template.get("securityContext") or {},
        "app": {k: app[k] for k in ("name", "securityContext") if k in app},
        "pod": {k: template[k] for k in POD_FIELDS if template.get(k)},
    }


def claim_of(where: Mapping[str, Any]) -> str | None:
    """The PVC name of a recorded volume, or None for any other kind of volume."""
    return ((where.get("volume") or {}).get("persistentVolumeClaim") or {}).get("claimName")


def volume_source(where: Mapping[str, Any]) -> str:
    """The kind of a recorded volume as the pod spec names it (emptyDir, hostPath, ...)."""
    return next((k for k in where.get("volume") or {} if k != "name"), "unknown")


def single_node(claim: Mapping[str, Any] | None) -> bool:
    """Whether a PVC can be mounted on one node at a time only."""
    modes = set(((claim or {}).get("spec") or {}).get("accessModes") or ())
    return bool(modes) and modes <= SINGLE_NODE_ACCESS


def pinned_affinity(affinity: Mapping[str, Any] | None, node: str) -> dict[str, Any]:
    """``affinity`` with its required node terms all narrowed to ``node`` (terms are ORed: each gets it)."""
    result = copy.deepcopy(dict(affinity or {}))
    required = result.setdefault("nodeAffinity", {}).setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.get("nodeSelectorTerms") or [{}]
    pin = {"key": "metadata.name", "operator": "In", "values": [node]}
    required["nodeSelectorTerms"] = [{**term, "matchFields": [*(term.get("matchFields") or []), pin]}
                                     for term in terms]
    return result


def pvc_volume(claim: str, database: str) -> dict[str, Any]:
    """The other PVC, mounted where the database's directory is: the file lands at its root."""
    return {
        "volume": {"name": DATA_VOLUME, "persistentVolumeClaim": {"claimName": claim}},
        "mount": {"name": DATA_VOLUME, "mountPath": posixpath.dirname(database) or "/"},
        "podSecurityContext": {},
        "app": {},
        "pod": {},
    }


def job_body(
    name: str, namespace: str, spec: Mapping[str, Any], replica: Mapping[str, Any], where: Mapping[str, Any],
    default_image: str,
) -> dict[str, Any]:
    """The restore Job of the SQLiteRestore ``name``."""
    labels = {"app.kubernetes.io/managed-by": "lifeboat-operator", RESTORE_LABEL: names.bounded(name)}
    return restore_job(job_name(name), namespace, labels, restore_args(spec, replica["spec"]["database"]),
                       replica, where, default_image,
                       deadline=spec.get("restoreTimeoutSeconds", DEFAULT_RESTORE_TIMEOUT_SECONDS),
                       # The restore writes a temporary file and renames it: a retry starts over cleanly.
                       retries=2)


def restore_job(
    job: str, namespace: str, labels: Mapping[str, str], args: Sequence[str], replica: Mapping[str, Any],
    where: Mapping[str, Any], default_image: str, *, deadline: int, retries: int,
) -> dict[str, Any]:
    """A Job running ``lifeboat ARGS`` (a restore) in the :data:`CONTAINER`: the replica's config and
    credentials, the agent's image, the volume and pod settings of ``where`` (see :func:`volume_for`).

    Its one-line result (or error) becomes the container's termination message
    (:func:`termination_message`).
    """
    replica_name = replica["metadata"]["name"]
    replica_spec = replica["spec"]
    pod_spec = {"securityContext": copy.deepcopy(dict(where["podSecurityContext"]))}
    base = injection._base_container(pod_spec, where["app"], replica_spec, replica_name, where["mount"],
                                     default_image)
    container = {
        "name": CONTAINER,
        **base,
        "command": ["sh", "-c", SCRIPT, CONTAINER],
        "args": list(args),
        "env": [*base.get("env", []), {"name": "LIFEBOAT_RESULT", "value": TERMINATION_LOG}],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [copy.deepcopy(dict(where["volume"])), *injection._volumes(replica_spec, replica_name)],
    }
    if pod_spec["securityContext"]:
        pod["securityContext"] = pod_spec["securityContext"]
    pod.update(copy.deepcopy(dict(where.get("pod") or {})))
    if where.get("node"):
        pod["affinity"] = pinned_affinity(pod.get("affinity"), where["node"])
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "backoffLimit": retries,
            "activeDeadlineSeconds": deadline,
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
        },
    }


def job_outcome(job: Mapping[str, Any]) -> str | None:
    """SUCCEEDED, FAILED, or None while it runs."""
    status = job.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "SuccessCriteriaMet"):
            return SUCCEEDED
        if condition.get("status") == "True" and condition.get("type") in ("Failed", "FailureTarget"):
            return FAILED
    if (status.get("succeeded") or 0) >= 1:
        return SUCCEEDED
    if (status.get("failed") or 0) > ((job.get("spec") or {}).get("backoffLimit", 6)):
        return FAILED
    return None


def termination_message(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The restore container's termination message from the newest Job pod that has one."""
    found: list[tuple[str, str]] = []
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if container.get("name") == CONTAINER and terminated.get("message"):
                found.append((terminated.get("finishedAt") or "", terminated["message"]))
    return max(found)[1] if found else None


def parse_result(message: str | None) -> dict[str, Any] | None:
    """The ``-json`` line of ``lifeboat restore`` (the last JSON object in the message), or None."""
    for line in reversed((message or "").strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except ValueError:
                continue
            if isinstance(result, dict) and "txid" in result:
                return result
    return None


def pod_refusal(restores: Sequence[Mapping[str, Any]], replica: str) -> str | None:
    """Why a new pod of ``replica`` is refused: an in-place restore of it stopped the app and may be
    writing its volume (until it scales the app back). None when no such restore runs."""
    for restore in restores:
        phase = (restore.get("status") or {}).get("phase")
        if ((restore.get("spec") or {}).get("replica") == replica and target(restore.get("spec") or {})[0] == "inPlace"
                and phase in (SCALING_DOWN, RESTORING)):
            return (f"SQLiteRestore {restore['metadata']['name']} is restoring SQLiteReplica {replica} in place "
                    f"({phase}): its pods may start once it scales the app back")
    return None


# --- pure: the state machine -----------------------------------------------------------------------

@dataclasses.dataclass
class Observed:
    """What the handler read for the current phase (only the fields that phase needs)."""

    replica: Mapping[str, Any] | None = None
    workloads: Sequence[tuple[str, Mapping[str, Any]]] = ()
    workload: Mapping[str, Any] | None = None  # the recorded one, re-read
    pods: Sequence[str] = ()  # live pods carrying the replica label
    nodes: Sequence[str] = ()  # where the workload's live pods run (Pending, in place)
    claim: Mapping[str, Any] | None = None  # the PVC holding the database (Pending, in place)
    job: Mapping[str, Any] | None = None
    job_pods: Sequence[str] = ()  # the Job's pods that may still write
    job_message: str | None = None
    now: datetime.datetime = dataclasses.field(default_factory=lambda: datetime.datetime.now(datetime.UTC))


@dataclasses.dataclass
class Step:
    """The status fields to set, actions to take (in order), conditions, and an Event."""

    status: dict[str, Any] = dataclasses.field(default_factory=dict)
    actions: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    conditions: dict[str, tuple[str, str, str]] = dataclasses.field(default_factory=dict)
    event: tuple[str, str, str] | None = None

    @property
    def phase(self) -> str | None:
        return self.status.get("phase")


def _fail(reason: str, message: str, **conditions: tuple[str, str, str]) -> Step:
    return Step(status={"phase": FAILED, "message": message, "completionTime": None},
                conditions={**conditions, COMPLETE: ("False", reason, message)},
                event=("Warning", reason, message))


def _abandon(reason: str, message: str, in_place: bool, actions: Sequence[tuple[Any, ...]] = ()) -> Step:
    """Give the restore up: in place, scale the app back first (``ScalingUp`` records the error)."""
    conditions = {RESTORED: ("False", reason, message)}
    if not in_place:
        step = _fail(reason, message, **conditions)
    else:
        step = Step(status={"phase": SCALING_UP, "error": message, "message": message + "; scaling the app back"},
                    conditions=conditions, event=("Warning", reason, message))
    step.actions = list(actions)
    return step


def _job_failure(job: Mapping[str, Any]) -> str:
    """Why the Job failed when its pod left no message (its deadline passed, its pods were never made)."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return f"{condition.get('reason')}: {condition.get('message')}"
    return "the restore Job failed (no termination message)"


def _scaled_up(recorded: Mapping[str, Any], seen: Observed) -> str | None:
    """Why an in-place restore must stop: its workload no longer at 0, or its pods back."""
    who = f"{recorded.get('kind')} {recorded.get('name')}"
    replicas = ((seen.workload or {}).get("spec") or {}).get("replicas", 0)
    if replicas:
        return (f"{who} was scaled to {replicas} while restoring (GitOps self-heal, an autoscaler or a "
                "person?): the restore Job was stopped")
    if seen.pods:
        return f"pod(s) {', '.join(sorted(seen.pods))} of {who} started while restoring: the restore Job was stopped"
    return None


def advance(spec: Mapping[str, Any], status: Mapping[str, Any], seen: Observed) -> Step:
    """The next step of a SQLiteRestore from its phase; an empty Step means "wait"."""
    phase = status.get("phase") or PENDING
    kind, claim = target(spec)
    if phase == PENDING:
        found = problems(spec)
        if found:
            return _fail("InvalidSpec", "; ".join(found))
        if seen.replica is None:
            return _fail("ReplicaNotFound", f"SQLiteReplica {spec['replica']!r} not found in this namespace")
        database = seen.replica["spec"]["database"]
        if kind == "pvc":
            assert claim is not None
            message = f"restoring {database} into PVC {claim}; the app is left alone"
            return Step(status={"phase": RESTORING, "target": {"pvc": claim}, "restoreStartTime": _timestamp(seen.now),
                                "volume": pvc_volume(claim, database), "message": message},
                        event=("Normal", RESTORING, message))
        label = f"{specs.REPLICA_LABEL}={spec['replica']}"
        if not seen.workloads:
            message = (f"cannot identify the workload to stop: no pod carrying label {label} is owned by a "
                       "Deployment (through its ReplicaSet) or a StatefulSet; restore into a PVC instead "
                       "(target: {pvc: NAME}), or start the app")
            return _fail("WorkloadNotFound", message, **{WORKLOAD_IDENTIFIED: ("False", "WorkloadNotFound",
                                                                               message)})
        if len(seen.workloads) > 1:
            names = ", ".join(f"{k} {w['metadata']['name']}" for k, w in seen.workloads)
            message = f"pods carrying label {label} belong to several workloads ({names}): stop all but one"
            return _fail("AmbiguousWorkload", message, **{WORKLOAD_IDENTIFIED: ("False", "AmbiguousWorkload",
                                                                                message)})
        ((wkind, workload),) = seen.workloads
        wname = workload["metadata"]["name"]
        try:
            where = volume_for(wkind, workload, seen.replica["spec"])
        except injection.InjectionError as exc:
            message = f"{wkind} {wname}: {exc}"
            return _fail("VolumeNotFound", message, **{WORKLOAD_IDENTIFIED: ("False", "VolumeNotFound", message)})
        claim_name = claim_of(where)
        if claim_name is None:
            message = (f"{wkind} {wname} keeps {database} on a {volume_source(where)} volume, not a "
                       "PersistentVolumeClaim: a restore there would write into a scratch volume while the "
                       "app's next pod restores the latest state; restore into a PVC instead (target: {pvc: NAME})")
            return _fail("VolumeNotPersistent", message, **{WORKLOAD_IDENTIFIED: ("False", "VolumeNotPersistent",
                                                                                  message)})
        if single_node(seen.claim) and len(set(seen.nodes)) == 1:
            # The claim may still be attached there, and a local PV lives there only.
            where["node"] = seen.nodes[0]
        replicas = (workload.get("spec") or {}).get("replicas", 1)
        message = f"{wkind} {wname} runs {replicas} replica(s); scaling it to 0"
        step = Step(status={"phase": SCALING_DOWN, "target": "inPlace", "volume": where, "message": message,
                            "workload": {"kind": wkind, "name": wname, "replicas": replicas},
                            "scaleDownTime": _timestamp(seen.now)},
                    conditions={WORKLOAD_IDENTIFIED: ("True", "Found", f"{wkind} {wname}, {replicas} replica(s)")},
                    event=("Normal", SCALING_DOWN, message))
        retention = (workload.get("spec") or {}).get("persistentVolumeClaimRetentionPolicy") or {}
        if wkind == "StatefulSet" and retention.get("whenScaled") == "Delete":
            warning = (f"StatefulSet {wname} has persistentVolumeClaimRetentionPolicy.whenScaled: Delete: scaling "
                       f"it to 0 deletes PVC {claim_name}, so the restore has no volume to write to; set "
                       "whenScaled: Retain before restoring in place")
            step.conditions[VOLUME_RETAINED] = ("False", "DeletedWhenScaled", warning)
            step.event = ("Warning", "DeletedWhenScaled", warning)
        return step

    recorded = status.get("workload") or {}
    if phase == SCALING_DOWN:
        actions: list[tuple[Any, ...]] = []
        if seen.workload is None:
            message = f"{recorded.get('kind')} {recorded.get('name')} disappeared while scaling down"
            return _fail("WorkloadGone", message)
        if (seen.workload.get("spec") or {}).get("replicas") != 0:
            actions.append(("scale", recorded["kind"], recorded["name"], 0))
        if seen.pods:
            stuck = ", ".join(sorted(seen.pods))
            timeout = spec.get("stopTimeoutSeconds", DEFAULT_STOP_TIMEOUT_SECONDS)
            elapsed = _elapsed(status, "scaleDownTime", seen.now)
            # Counted only once the workload is at 0: the scale call itself may come a round later.
            if not actions and elapsed is not None and elapsed > timeout:
                message = (f"pod(s) {stuck} still running {timeout} s after scaling to 0 (a finalizer or an "
                           "unreachable node?); nothing was restored")
                return _abandon("PodsDidNotStop", message, in_place=True)
            return Step(status={"message": f"waiting for pod(s) to stop: {stuck}"}, actions=actions)
        message = f"{recorded['kind']} {recorded['name']} is at 0 and its pods are gone; starting the restore Job"
        return Step(status={"phase": RESTORING, "message": message, "restoreStartTime": _timestamp(seen.now)},
                    actions=actions, event=("Normal", RESTORING, message))

    if phase == RESTORING:
        in_place = kind == "inPlace"
        outcome = job_outcome(seen.job) if seen.job is not None else None
        if outcome is None:
            stopped = _scaled_up(recorded, seen) if in_place else None
            if stopped:
                return _abandon("WorkloadScaledUp", stopped, in_place, [("delete_job",)])
            timeout = spec.get("restoreTimeoutSeconds", DEFAULT_RESTORE_TIMEOUT_SECONDS)
            elapsed = _elapsed(status, "restoreStartTime", seen.now)
            if elapsed is not None and elapsed > timeout:
                message = (f"the restore did not finish within {timeout} s (spec.restoreTimeoutSeconds; is its "
                           "pod unschedulable, or its image or ServiceAccount missing?): the restore Job was stopped")
                return _abandon("RestoreTimedOut", message, in_place, [("delete_job",)])
            if seen.job is None:
                return Step(actions=[("create_job",)], status={"message": "restore Job created"},
                            event=("Normal", "JobCreated", "restore Job created"))
            return Step()
        assert seen.job is not None
        after = SCALING_UP if in_place else None
        if outcome == SUCCEEDED:
            result = parse_result(seen.job_message) or {}
            checked = result.get("integrity_check")
            record = {"txid": result.get("txid"), "integrityCheck": checked,
                      "timestamp": spec.get("timestamp"), "durationMs": result.get("duration_ms")}
            point = f"txid {record['txid']}" + (f" (at or before {spec['timestamp']})" if spec.get("timestamp") else "")
            message = f"restored {point}"
            conditions = {RESTORED: ("True", "Restored", message)}
            if spec.get("verify"):
                good = checked == "ok"
                conditions[VERIFIED] = ("True", "IntegrityOK", "PRAGMA integrity_check: ok") if good else (
                    "False", "IntegrityUnknown", f"PRAGMA integrity_check: {checked!r}")
            step = Step(status={"result": record, "message": message}, conditions=conditions,
                        event=("Normal", "Restored", message))
            step.status["phase"] = after or SUCCEEDED
            if after is None:
                step.conditions[COMPLETE] = ("True", SUCCEEDED, message)
            return step
        error = (seen.job_message or _job_failure(seen.job)).strip()[-1000:]
        return _abandon("RestoreFailed", f"restore Job failed: {error}", in_place)

    if phase == SCALING_UP:
        if seen.workload is None:
            return _fail("WorkloadGone", f"{recorded.get('kind')} {recorded.get('name')} disappeared")
        if seen.job_pods:
            # The app must not start beside a restore that may still be writing.
            running = seen.job is not None and job_outcome(seen.job) is None
            deleting = (seen.job or {}).get("metadata", {}).get("deletionTimestamp")
            return Step(status={"message": "waiting for the restore Job's pod(s) to stop before scaling back: "
                                           + ", ".join(sorted(seen.job_pods))},
                        actions=[("delete_job",)] if running and not deleting else [])
        actions = []
        if (seen.workload.get("spec") or {}).get("replicas") != recorded["replicas"]:
            actions.append(("scale", recorded["kind"], recorded["name"], recorded["replicas"]))
        if status.get("error"):
            step = _fail("RestoreFailed", f"{status['error']}; {recorded['kind']} {recorded['name']} scaled "
                                          f"back to {recorded['replicas']}")
            step.actions = actions
            return step
        message = f"{recorded['kind']} {recorded['name']} scaled back to {recorded['replicas']} replica(s)"
        return Step(status={"phase": SUCCEEDED, "message": message}, actions=actions,
                    conditions={COMPLETE: ("True", SUCCEEDED, message)}, event=("Normal", SUCCEEDED, message))
    return Step()


# --- kopf ------------------------------------------------------------------------------------------

async def _observe(
    lifeboat: kube.Kube, namespace: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any]
) -> Observed:
    phase = status.get("phase") or PENDING
    seen = Observed()
    recorded = status.get("workload") or {}
    in_place = target(spec)[0] == "inPlace"
    if phase == PENDING:
        seen.replica = await lifeboat.replica(namespace, spec.get("replica", ""))
        if seen.replica is not None and in_place:
            pods = await lifeboat.labelled_pods(namespace, specs.REPLICA_LABEL, spec["replica"])
            live = [p for p in pods if not guards.is_terminating(p)]
            seen.workloads = await lifeboat.owning_workloads(namespace, live)
            seen.nodes = [n for p in live if (n := (p.get("spec") or {}).get("nodeName"))]
            seen.claim = await _claim(lifeboat, namespace, seen)
        return seen
    if in_place:
        seen.workload = await lifeboat.workload(recorded["kind"], namespace, recorded["name"])
    if in_place and phase in (SCALING_DOWN, RESTORING):
        pods = await lifeboat.labelled_pods(namespace, specs.REPLICA_LABEL, spec["replica"])
        seen.pods = alive(pods)
    if phase in (RESTORING, SCALING_UP):
        seen.job = await lifeboat.job(namespace, job_name(name))
        pods = await lifeboat.labelled_pods(namespace, JOB_NAME_LABEL, job_name(name))
        seen.job_pods = alive(pods)
        if seen.job is not None and job_outcome(seen.job):
            seen.job_message = termination_message(pods)
    return seen


def alive(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """The names of the pods whose containers may still run (terminating ones included)."""
    return [p["metadata"]["name"] for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]


async def _claim(lifeboat: kube.Kube, namespace: str, seen: Observed) -> Mapping[str, Any] | None:
    """The PVC that holds the database of the one workload found, if there is exactly one."""
    if seen.replica is None or len(seen.workloads) != 1:
        return None
    ((kind, workload),) = seen.workloads
    try:
        claim = claim_of(volume_for(kind, workload, seen.replica["spec"]))
    except injection.InjectionError:
        return None  # advance() reports it
    return await lifeboat.claim(namespace, claim) if claim else None


@kopf.timer(specs.GROUP, specs.VERSION, PLURAL, interval=INTERVAL)
@metrics.counted("restore")
async def restore_step(
    body: kopf.Body, spec: kopf.Spec, name: str, namespace: str, patch: kopf.Patch, memo: kopf.Memo,
    logger: logging.Logger, **_: Any,
) -> None:
    """One step of the restore; the timer comes back until the phase is terminal."""
    status = dict(body.get("status") or {})
    if status.get("phase") in TERMINAL:
        return
    lifeboat: kube.Kube = memo.kube
    seen = await _observe(lifeboat, namespace, name, spec, status)
    step = advance(spec, status, seen)
    for action in step.actions:
        if action[0] == "scale":
            _, kind, workload, replicas = action
            logger.info("Scaling %s %s to %d.", kind, workload, replicas)
            await lifeboat.scale(kind, namespace, workload, replicas)
        elif action[0] == "delete_job":
            logger.info("Deleting the restore Job %s.", job_name(name))
            await lifeboat.delete_job(namespace, job_name(name))
        elif action[0] == "create_job":
            replica = await lifeboat.replica(namespace, spec["replica"])
            if replica is None:
                step = _fail("ReplicaNotFound", f"SQLiteReplica {spec['replica']!r} disappeared")
                break
            job = job_body(name, namespace, spec, replica, status["volume"],
                           (replica["spec"].get("agent") or {}).get("image") or memo.options.agent_image)
            kopf.append_owner_reference(job, owner=body)
            await lifeboat.create_job(namespace, job)
            step.status["job"] = job["metadata"]["name"]

    now = statuses.now_rfc3339()
    if not status.get("phase"):
        step.status.setdefault("startTime", now)
        step.status.setdefault("phase", step.phase or PENDING)
    if step.phase in TERMINAL:
        step.status["completionTime"] = now
    conditions = status.get("conditions") or []
    for type_, verdict in step.conditions.items():
        conditions = statuses.set_condition(conditions, type_, *verdict, generation=None, now=now)
    if step.conditions:
        step.status["conditions"] = conditions
    if step.phase and step.phase != status.get("phase"):
        metrics.RESTORES.labels(step.phase).inc()
    for key, value in step.status.items():
        patch.status[key] = value
    if step.event:
        kopf.event(body, type=step.event[0], reason=step.event[1], message=step.event[2])


@kopf.on.delete(specs.GROUP, specs.VERSION, PLURAL)
async def restore_deleted(body: kopf.Body, name: str, namespace: str, memo: kopf.Memo, logger: logging.Logger,
                          **_: Any) -> None:
    """A restore deleted mid-way stops its Job and, once the Job's pods are gone, scales the app back.

    Not optional (a finalizer holds the restore): without it the app could be scaled back while the
    Job still writes, or left at 0 replicas when the operator missed the deletion.
    """
    status = body.get("status") or {}
    if status.get("phase") in TERMINAL or not status.get("phase"):
        return
    lifeboat: kube.Kube = memo.kube
    await lifeboat.delete_job(namespace, job_name(name))
    running = alive(await lifeboat.labelled_pods(namespace, JOB_NAME_LABEL, job_name(name)))
    # Read again: a timer round in flight when the deletion came may just have created the Job.
    if running or await lifeboat.job(namespace, job_name(name)) is not None:
        raise kopf.TemporaryError(f"waiting for the restore Job and its pod(s) to go: {', '.join(sorted(running))}",
                                  delay=INTERVAL)
    recorded = status.get("workload") or {}
    if recorded:
        logger.warning("Deleted during %s: scaling %s %s back to %d.", status["phase"], recorded["kind"],
                       recorded["name"], recorded["replicas"])
        await lifeboat.scale(recorded["kind"], namespace, recorded["name"], recorded["replicas"])


@kopf.on.validate(specs.GROUP, specs.VERSION, PLURAL, id="validate-restore", operations=["CREATE"])
async def validate_restore(spec: kopf.Spec, **_: Any) -> None:
    """Refuse at ``kubectl apply`` a SQLiteRestore that would fail at once (its target CEL cannot type).

    CREATE only: the spec is not meant to change afterwards, and kopf's own annotation updates must
    never be refused.
    """
    found = problems(spec)
    if found:
        raise kopf.AdmissionError("; ".join(found), code=400)
