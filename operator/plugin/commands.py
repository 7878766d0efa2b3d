"""The plugin's commands against the API server. Each returns the exit code; failures raise
:class:`~lifeboat.operator.plugin.connect.PluginError` (or the client's exceptions, which main words)."""

import datetime
import json
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from lifeboat.operator import spec as specs
from lifeboat.operator.injection import AGENT_CONTAINER
from lifeboat.operator.plugin import table
from lifeboat.operator.plugin.connect import Connection, PluginError, api_message

RESTORE_PLURAL = "sqliterestores"
RESTORE_KIND = "SQLiteRestore"
TERMINAL = ("Succeeded", "Failed")
VERIFY_ANNOTATION = "lifeboat.dev/verify-requested"
# status.lastVerification.result of a verification that passed (the other value is Failed).
VERIFY_SUCCESS = "Succeeded"
# A watch is reopened this often, so that a dropped connection is noticed and the deadline kept.
WATCH_SECONDS = 30


def _objects(conn: Connection) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(conn.api)


def get_replica(conn: Connection, name: str) -> dict[str, Any]:
    """The SQLiteReplica, or a :class:`PluginError` naming it when it does not exist."""
    try:
        return dict(_objects(conn).get_namespaced_custom_object(
            specs.GROUP, specs.VERSION, conn.namespace, specs.PLURAL, name))
    except ApiException as exc:
        if exc.status == 404:
            raise PluginError(f"no SQLiteReplica {name!r} in namespace {conn.namespace}") from None
        raise


def _list(conn: Connection, plural: str) -> list[dict[str, Any]]:
    try:
        found = _objects(conn).list_namespaced_custom_object(specs.GROUP, specs.VERSION, conn.namespace, plural)
    except ApiException as exc:
        if exc.status == 404:  # the resource itself is unknown
            raise PluginError(f"the API server at {conn.server} serves no {plural}.{specs.GROUP}: "
                              "are Lifeboat's CRDs installed?") from None
        raise
    return list(found.get("items") or [])


def status(conn: Connection, name: str | None, output: str, out: TextIO) -> int:
    """A table (or JSON) of the namespace's SQLiteReplicas, or of the one named."""
    replicas = [get_replica(conn, name)] if name else _list(conn, specs.PLURAL)
    restores = _list(conn, RESTORE_PLURAL)
    rows = [table.summary(r, restores) for r in sorted(replicas, key=lambda r: r["metadata"]["name"])]
    if output == "json":
        print(json.dumps(rows[0] if name else rows, indent=2), file=out)
    elif rows:
        print(table.render(rows), file=out)
    else:
        print(f"No SQLiteReplicas in namespace {conn.namespace}.", file=sys.stderr)
    return 0


def _changes(conn: Connection, plural: str, name: str, deadline: float | None,
             what: str) -> Iterator[dict[str, Any]]:
    """The object now, then each new version of it as a watch delivers them. Never exhausted: past
    ``deadline``, or when the object is deleted, it raises :class:`PluginError`."""
    api = _objects(conn)
    while True:
        current = api.get_namespaced_custom_object(specs.GROUP, specs.VERSION, conn.namespace, plural, name)
        yield current
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise PluginError(f"timed out waiting for {what}")
        stream = watch.Watch().stream(
            api.list_namespaced_custom_object, specs.GROUP, specs.VERSION, conn.namespace, plural,
            field_selector=f"metadata.name={name}", resource_version=current["metadata"]["resourceVersion"],
            timeout_seconds=max(1, int(min(WATCH_SECONDS, left if left is not None else WATCH_SECONDS))))
        try:
            for event in stream:
                if event["type"] == "DELETED":
                    raise PluginError(f"{what}: {name} was deleted")
                if event["type"] in ("ADDED", "MODIFIED"):
                    yield event["object"]
        except ApiException as exc:
            if exc.status != 410:  # an expired resourceVersion: GET again and watch from there
                raise


def restore(conn: Connection, name: str, point: Mapping[str, str], into: str | None, timeout: float | None,
            out: TextIO) -> int:
    """Create a SQLiteRestore of ``name`` and print its phases until it ends: 0 if it succeeded."""
    get_replica(conn, name)
    body = {"apiVersion": f"{specs.GROUP}/{specs.VERSION}", "kind": RESTORE_KIND,
            "metadata": {"generateName": f"{name}-", "namespace": conn.namespace},
            "spec": {"replica": name, "target": {"pvc": into} if into else "inPlace", **point}}
    created = _objects(conn).create_namespaced_custom_object(
        specs.GROUP, specs.VERSION, conn.namespace, RESTORE_PLURAL, body)
    restore_name = created["metadata"]["name"]
    where = f"into PVC {into}" if into else "in place"
    when = point.get("txid") or point.get("timestamp") or "the latest state"
    print(f"sqliterestore/{restore_name} created: {name} {where}, to {when}", file=out, flush=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    phases: list[str] = []

    def ended(current: Mapping[str, Any]) -> bool:
        state = current.get("status") or {}
        phase = state.get("phase")
        if phase and phase not in phases[-1:]:
            phases.append(phase)
            print(f"{phase}: {state.get('message') or ''}".rstrip(": "), file=out, flush=True)
        return phase in TERMINAL

    final = next(filter(ended, _changes(conn, RESTORE_PLURAL, restore_name, deadline,
                                        f"sqliterestore/{restore_name}")))
    state = final.get("status") or {}
    if state["phase"] == "Failed":
        raise PluginError(f"sqliterestore/{restore_name} failed: {state.get('message') or state.get('error')}")
    return 0


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def verify(conn: Connection, name: str, timeout: float, out: TextIO) -> int:
    """Request a verification (the annotation) and wait for its result: 0 if it succeeded."""
    before = _last_verification(get_replica(conn, name)).get("requested")
    requested = _now()
    while requested == before:  # one request a second: an older answer must not pass for this one's
        time.sleep(0.2)
        requested = _now()
    _objects(conn).patch_namespaced_custom_object(
        specs.GROUP, specs.VERSION, conn.namespace, specs.PLURAL, name,
        {"metadata": {"annotations": {VERIFY_ANNOTATION: requested}}})
    print(f"sqlitereplica/{name}: verification requested at {requested}", file=out, flush=True)
    what = f"the verification of sqlitereplica/{name} (requested {requested})"
    answers = _changes(conn, specs.PLURAL, name, time.monotonic() + timeout, what)
    answered = next(c for c in answers if _last_verification(c).get("requested") == requested)
    result = _last_verification(answered)
    parts = [f"result {result.get('result')}"]
    parts += [f"{key} {result[key]}" for key in ("txid", "target", "time", "duration") if result.get(key)]
    print(f"verification: {', '.join(parts)}", file=out)
    if result.get("message"):
        print(result["message"], file=out)
    if result.get("result") != VERIFY_SUCCESS:
        raise PluginError(f"verification of sqlitereplica/{name} did not succeed: "
                          f"{result.get('result')}: {result.get('message') or 'no message'}")
    return 0


def _last_verification(replica: Mapping[str, Any]) -> Mapping[str, Any]:
    return (replica.get("status") or {}).get("lastVerification") or {}


def set_paused(conn: Connection, name: str, paused: bool, out: TextIO) -> int:
    """Set ``spec.paused`` (pause) or remove it (resume)."""
    get_replica(conn, name)
    _objects(conn).patch_namespaced_custom_object(
        specs.GROUP, specs.VERSION, conn.namespace, specs.PLURAL, name,
        {"spec": {"paused": True if paused else None}})
    print(f"sqlitereplica/{name} {'paused' if paused else 'resumed'}", file=out)
    return 0


def writer_pod(conn: Connection, name: str, pod: str | None) -> str:
    """The pod whose agent log ``logs`` shows: the one live pod carrying the replica's label."""
    get_replica(conn, name)
    label = f"{specs.REPLICA_LABEL}={name}"
    pods = client.CoreV1Api(conn.api).list_namespaced_pod(conn.namespace, label_selector=label).items
    live = [p for p in pods if p.metadata.deletion_timestamp is None and p.status.phase in ("Pending", "Running")]
    if pod:
        chosen = next((p for p in pods if p.metadata.name == pod), None)
        if chosen is None:
            raise PluginError(f"--pod {pod}: no pod of that name carries label {label} in namespace "
                              f"{conn.namespace}")
    elif not live:
        raise PluginError(f"no writer pod: no running pod carries label {label} in namespace {conn.namespace}")
    elif len(live) > 1:
        names = ", ".join(sorted(p.metadata.name for p in live))
        raise PluginError(f"several pods carry label {label} ({names}): pick one with --pod")
    else:
        chosen = live[0]
    containers = [*(chosen.spec.init_containers or []), *chosen.spec.containers]
    if not any(c.name == AGENT_CONTAINER for c in containers):
        raise PluginError(f"pod {chosen.metadata.name} runs no {AGENT_CONTAINER} container (it was not injected)")
    return str(chosen.metadata.name)


def logs(conn: Connection, name: str, follow: bool, pod: str | None, out: TextIO) -> int:
    """Copy the agent container's log of the writer pod to ``out`` (streaming with ``follow``)."""
    chosen = writer_pod(conn, name, pod)
    try:
        response = client.CoreV1Api(conn.api).read_namespaced_pod_log(
            chosen, conn.namespace, container=AGENT_CONTAINER, follow=follow, _preload_content=False)
    except ApiException as exc:
        raise PluginError(f"cannot read the log of {AGENT_CONTAINER} in pod {chosen}: "
                          f"{api_message(exc)}") from None
    for chunk in response.stream(64 * 1024):
        out.write(chunk.decode(errors="replace"))
        out.flush()
    return 0

