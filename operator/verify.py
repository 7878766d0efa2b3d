"""Restores verified on a schedule: a SQLiteReplica's ``spec.verify`` runs a throwaway restore.

On the cron ``schedule``, or when the replica is annotated ``lifeboat.dev/verify-requested: <time>``,
the operator (the leader: kopf pauses the timers of the others) creates a Job that restores the
replica into an ``emptyDir`` (``lifeboat restore -o``), at the latest point or at a random time within
the snapshot retention window, with ``PRAGMA quick_check`` or ``integrity_check``. The Job is built as
a SQLiteRestore's (:func:`restores.restore_job`): the agent's image, the replica's config and
credentials, and what the workload's pod template says about identity, placement and security.

The outcome goes into ``status.lastVerification`` (with ``requested`` echoing the annotation that
asked for it, so a client can wait for it), the ``Verified`` condition, an Event (a failure names the
file or page at fault: the restore's error line, read from the Job pod's termination message) and the
metrics ``lifeboat_restore_verified_timestamp_seconds`` and ``lifeboat_restore_verification_failures_total``.
What a verification in flight needs to be finished by another replica after a leader change lives in
``status.verification``.
"""

import dataclasses
import datetime
import functools
import logging
import posixpath
import random
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
from lifeboat.operator import agent_config, cron, guards, injection, kube, metrics, names, restores
from lifeboat.operator import spec as specs
from lifeboat.operator import status as statuses

REQUESTED_ANNOTATION = "lifeboat.dev/verify-requested"
VERIFY_LABEL = "lifeboat.dev/verify"
VERIFIED = "Verified"
LATEST, RANDOM = "latest", "random-in-window"
SUCCEEDED, FAILED = "Succeeded", "Failed"
INTERVAL = 5.0
# The restore lands here, in an emptyDir that goes with the Job's pod.
SCRATCH = "/var/lib/lifeboat-verify"
# Finished Jobs stay a while for their logs; their outcome is in the status and an Event already.
FINISHED_JOB_TTL_SECONDS = 600
DEFAULT_RETENTION = "24h"  # the agent's snapshot retention when spec.snapshot.retention is unset
# Any schedule's runs repeat within this many: enough to find its longest gap between two runs.
GAP_SAMPLE_RUNS = 400
GAP_SAMPLE_START = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)


# --- pure ------------------------------------------------------------------------------------------

def problems(spec: Mapping[str, Any]) -> list[str]:
    """What is wrong with ``spec.verify`` beyond what the schema rejects (one line each)."""
    verify = spec.get("verify")
    if not verify:
        return []
    try:
        cron.parse(str(verify.get("schedule", "")))
    except cron.CronError as exc:
        return [f"spec.verify.schedule {verify.get('schedule')!r}: {exc}"]
    return []


@functools.lru_cache(maxsize=256)
def interval_seconds(schedule: str) -> float:
    """The longest time between two runs of a schedule: the alert allows two of them without a success."""
    return cron.parse(schedule).longest_gap(GAP_SAMPLE_START, GAP_SAMPLE_RUNS).total_seconds()


def retention_seconds(spec: Mapping[str, Any]) -> float:
    """How far back the replica keeps snapshots (the window a random verification picks from)."""
    return specs.parse_duration((spec.get("snapshot") or {}).get("retention") or DEFAULT_RETENTION)


def random_point(
    now: datetime.datetime, retention: float, created: datetime.datetime, rng: random.Random
) -> datetime.datetime:
    """A time drawn uniformly from the retention window, whole seconds, never before the replica existed."""
    start = max(now - datetime.timedelta(seconds=retention), created)
    span = max(0, int((now - start).total_seconds()))
    return (start + datetime.timedelta(seconds=rng.randint(0, span))).replace(microsecond=0)


def job_name(replica: str, now: datetime.datetime) -> str:
    """One Job per verification: a name of its own, so a finished one is never taken for the next."""
    return names.bounded(replica, suffix=f"-verify-{int(now.timestamp())}")


def restore_args(verify: Mapping[str, Any], database: str, point: str | None) -> list[str]:
    """``lifeboat restore`` into the scratch volume, with the integrity check the spec asks for."""
    args = ["restore", "-json", "-integrity-check", verify.get("integrityCheck") or "full"]
    if point:
        args += ["-timestamp", point]
    output = posixpath.join(SCRATCH, posixpath.basename(database))
    return [*args, "-o", output, "-config", agent_config.CONFIG_PATH, database]


def placement(workloads: Sequence[tuple[str, Mapping[str, Any]]], replica_spec: Mapping[str, Any]) -> dict[str, Any]:
    """The Job's volume (scratch) and what its pod takes from the one workload's pod template, if any."""
    where: dict[str, Any] = {"podSecurityContext": {}, "app": {}, "pod": {}}
    if len(workloads) == 1:
        ((kind, workload),) = workloads
        try:
            where = restores.volume_for(kind, workload, replica_spec)
        except injection.InjectionError:
            pass  # the webhook refuses such pods too; the Job runs with the defaults
    return {**where, "volume": {"name": restores.DATA_VOLUME, "emptyDir": {}},
            "mount": {"name": restores.DATA_VOLUME, "mountPath": SCRATCH}}


def _time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _rfc3339(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class Start:
    """A verification to start: ``point`` None is the latest state."""

    point: str | None
    requested: str | None


def due(
    spec: Mapping[str, Any], status: Mapping[str, Any], requested: str | None, now: datetime.datetime
) -> tuple[Start | None, dict[str, Any]]:
    """(a verification to start or None, ``status.verification`` fields to set) while none runs.

    An annotation value not yet echoed in ``status.lastVerification.requested`` runs one now; the
    schedule runs one at its first run after ``lastScheduleTime`` (set when first seen: a new
    schedule does not start with a missed run).
    """
    verify = spec.get("verify") or {}
    state = status.get("verification") or {}
    if requested and requested != (status.get("lastVerification") or {}).get("requested"):
        return Start(None, requested), {}
    if not verify:
        return None, {}
    last = state.get("lastScheduleTime")
    if not last:
        return None, {"lastScheduleTime": _rfc3339(now), "since": state.get("since") or _rfc3339(now)}
    if cron.parse(verify["schedule"]).next_after(_time(last)) > now:
        return None, {}
    return Start(None, None), {"lastScheduleTime": _rfc3339(now)}


def judge(
    active: Mapping[str, Any], job: Mapping[str, Any] | None, message: str | None
) -> tuple[str, str, str | None] | None:
    """(result, message, restored txid) of the verification in flight, or None while its Job runs."""
    if job is None:
        return FAILED, f"the verification Job {active.get('job')} disappeared before it finished", None
    outcome = restores.job_outcome(job)
    if outcome is None:
        return None
    if outcome == restores.FAILED:
        lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
        why = lines[-1] if lines else restores._job_failure(job)
        return FAILED, f"restore failed: {why[-statuses.MESSAGE_LIMIT:]}", None
    result = restores.parse_result(message)
    if result is None:
        return FAILED, "the verification Job succeeded but left no result line (termination message)", None
    txid = str(result.get("txid") or "").lower()
    checked = result.get("integrity_check")
    if checked != "ok":
        return FAILED, f"restored txid {txid}, but the integrity check said {checked!r}", txid
    writer = str(active.get("writerTxid") or "").lower()
    point = active.get("target") or LATEST
    if writer and point == LATEST and txid < writer:
        return (FAILED, f"restored txid {txid} is behind the replica's {writer} (status.txid when the "
                        "verification began): the latest state is not restorable", txid)
    if writer and point != LATEST and txid > writer:
        return FAILED, f"restored txid {txid} at {point} is past the replica's {writer}", txid
    compared = f", replica at {writer}" if writer else ""
    return SUCCEEDED, f"restored txid {txid} ({point}{compared}); integrity check ok", txid


def record(
    active: Mapping[str, Any], verdict: tuple[str, str, str | None], now: datetime.datetime
) -> dict[str, Any]:
    """The ``status.lastVerification`` of a finished verification (every key set: a merge patch)."""
    result, message, txid = verdict
    started = active.get("startTime")
    duration = f"{int((now - _time(started)).total_seconds())}s" if started else None
    return {"time": _rfc3339(now), "txid": txid, "target": active.get("target") or LATEST, "duration": duration,
            "result": result, "message": message, "requested": active.get("requested")}


# --- kopf ------------------------------------------------------------------------------------------

def _forget(namespace: str, name: str, *families: Any) -> None:
    """Drop these series of the replica (an alert would otherwise fire on stale ones)."""
    for family in families:
        try:
            family.remove(namespace, name)
        except KeyError:
            pass  # never exported


def _condition(patch: kopf.Patch, verdict: tuple[str, str, str]) -> None:
    statuses.patch_conditions(patch, {VERIFIED: verdict}, generation=None)


async def _start(
    lifeboat: kube.Kube, body: kopf.Body, spec: Mapping[str, Any], name: str, namespace: str, start: Start,
    image: str, now: datetime.datetime, rng: random.Random,
) -> dict[str, Any]:
    """Create the verification Job; the ``status.verification`` fields of the verification in flight."""
    point = None
    if (spec.get("verify") or {}).get("timestamp") == RANDOM:
        created = _time(body["metadata"]["creationTimestamp"])
        point = _rfc3339(random_point(now, retention_seconds(spec), created, rng))
    pods = await lifeboat.labelled_pods(namespace, specs.REPLICA_LABEL, name)
    live = [p for p in pods if not guards.is_terminating(p)]
    where = placement(await lifeboat.owning_workloads(namespace, live), spec)
    job = job_name(name, now)
    labels = {"app.kubernetes.io/managed-by": "lifeboat-operator", VERIFY_LABEL: names.bounded(name)}
    replica = {"metadata": {"name": name}, "spec": spec}
    args = restore_args(spec.get("verify") or {}, spec["database"], point)
    # No retries: a verification is a probe, and the next one comes on the schedule.
    manifest = restores.restore_job(job, namespace, labels, args, replica, where, image,
                                    deadline=restores.DEFAULT_RESTORE_TIMEOUT_SECONDS, retries=0)
    manifest["spec"]["ttlSecondsAfterFinished"] = FINISHED_JOB_TTL_SECONDS
    kopf.append_owner_reference(manifest, owner=body)
    await lifeboat.create_job(namespace, manifest)
    return {"job": job, "startTime": _rfc3339(now), "target": point or LATEST,
            "writerTxid": (body.get("status") or {}).get("txid"), "requested": start.requested}


def has_verification(spec: kopf.Spec, annotations: kopf.Annotations, status: kopf.Status, **_: Any) -> bool:
    """Whether a replica has anything to verify or to clean up: the timer runs only for those.

    Without this filter every SQLiteReplica would wake the operator every few seconds; kopf starts and
    stops the timer as the filter's answer changes.
    """
    state = status.get("verification") or {}
    return bool(spec.get("verify") or annotations.get(REQUESTED_ANNOTATION) or any(state.values()))


@kopf.timer(specs.GROUP, specs.VERSION, specs.PLURAL, interval=INTERVAL, id="verify", when=has_verification)
@metrics.counted("verify")
async def verify_step(
    body: kopf.Body, spec: kopf.Spec, name: str, namespace: str, annotations: kopf.Annotations,
    patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, **_: Any,
) -> None:
    """Finish the verification in flight, or start one when asked or scheduled."""
    status = body.get("status") or {}
    state = status.get("verification") or {}
    now = datetime.datetime.now(datetime.UTC)
    lifeboat: kube.Kube = memo.kube
    # A new leader exports what the previous one saw.
    if state.get("lastSuccessTime"):
        metrics.VERIFIED.labels(namespace, name).set(_time(state["lastSuccessTime"]).timestamp())
    if state.get("since"):
        metrics.VERIFY_SINCE.labels(namespace, name).set(_time(state["since"]).timestamp())
    verify = spec.get("verify")
    invalid = problems(spec)
    if verify and not invalid:
        metrics.VERIFY_INTERVAL.labels(namespace, name).set(interval_seconds(verify["schedule"]))
    elif not verify:
        # Without a schedule the alert has nothing to count runs of; a schedule set again starts afresh.
        _forget(namespace, name, metrics.VERIFY_INTERVAL, metrics.VERIFY_SINCE)
        if state.get("lastScheduleTime"):
            patch.status["verification"] = {"lastScheduleTime": None, "since": None}

    if state.get("job"):
        job = await lifeboat.job(namespace, state["job"])
        message = None
        if job is not None and restores.job_outcome(job):
            pods = await lifeboat.labelled_pods(namespace, restores.JOB_NAME_LABEL, state["job"])
            message = restores.termination_message(pods)
        verdict = judge(state, job, message)
        if verdict is None:
            return
        done = record(state, verdict, now)
        patch.status["lastVerification"] = done
        cleared = {"job": None, "startTime": None, "target": None, "writerTxid": None, "requested": None}
        if verdict[0] == SUCCEEDED:
            metrics.VERIFIED.labels(namespace, name).set(_time(done["time"]).timestamp())  # as the status says
            patch.status["verification"] = {**cleared, "lastSuccessTime": done["time"]}
            _condition(patch, ("True", "Verified", done["message"]))
            kopf.event(body, type="Normal", reason="Verified", message=done["message"])
        else:
            metrics.VERIFICATION_FAILURES.labels(namespace, name).inc()
            patch.status["verification"] = cleared
            _condition(patch, ("False", "VerificationFailed", done["message"]))
            kopf.event(body, type="Warning", reason="VerificationFailed", message=done["message"])
        logger.info("Verification %s: %s", done["result"], done["message"])
        return

    if invalid:  # stored before the CRD rule existed, or a range the rule lets through (e.g. 30-10)
        verdict = ("False", "InvalidSchedule", "; ".join(invalid))
        shown = next((c for c in status.get("conditions") or [] if c.get("type") == VERIFIED), {})
        if (shown.get("status"), shown.get("reason"), shown.get("message")) != verdict:  # once, not every round
            _condition(patch, verdict)
            kopf.event(body, type="Warning", reason=verdict[1], message=verdict[2])
        return
    start, fields = due(spec, status, annotations.get(REQUESTED_ANNOTATION), now)
    if start is not None:
        image = (spec.get("agent") or {}).get("image") or memo.options.agent_image
        fields.update(await _start(lifeboat, body, spec, name, namespace, start, image, now, random.Random()))
        logger.info("Verification Job %s created.", fields["job"])
    if fields:
        patch.status["verification"] = fields


@kopf.on.delete(specs.GROUP, specs.VERSION, specs.PLURAL, id="verify-metrics", optional=True)
async def verify_deleted(name: str, namespace: str, **_: Any) -> None:
    """A deleted replica's verification series go with it (its Jobs go by their owner reference)."""
    _forget(namespace, name, metrics.VERIFIED, metrics.VERIFY_INTERVAL, metrics.VERIFY_SINCE,
            metrics.VERIFICATION_FAILURES)
