"""Pod + SQLiteReplica → the pod with the restore init container and the replication agent. Pure.

The admission webhook calls :func:`inject` on every labelled pod at CREATE; the function does no I/O,
so the whole contract (ordering, volumes, security contexts, idempotence, denials) is unit-tested.
"""

import copy
import posixpath
from collections.abc import Mapping
from typing import Any

from lifeboat.operator import agent_config
from lifeboat.operator import spec as specs

DEFAULT_IMAGE = "ghcr.io/lifeboat-dev/lifeboat-agent:0.1.0"
RESTORE_CONTAINER = "lifeboat-restore"
AGENT_CONTAINER = "lifeboat-agent"
CONFIG_VOLUME = "lifeboat-config"
TMP_VOLUME = "lifeboat-tmp"
GCS_VOLUME = "lifeboat-gcs-credentials"
GCS_MOUNT = "/var/run/secrets/lifeboat"
METRICS_PORT_NAME = "lifeboat-http"
# The uid the image creates; used when neither the app container nor the pod names one.
DEFAULT_UID = 65532
DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"memory": "256Mi"},
}


class InjectionError(Exception):
    """The pod cannot be injected; the message is meant for the user who created it."""


def inject(
    pod: Mapping[str, Any],
    replica: Mapping[str, Any],
    *,
    native_sidecar: bool = True,
    default_image: str = DEFAULT_IMAGE,
) -> dict[str, Any]:
    """Return a copy of ``pod`` with the restore init container and the agent added.

    ``replica`` is the whole SQLiteReplica object. ``native_sidecar`` is the operator's default,
    overridden by ``spec.agent.nativeSidecar``. A pod already injected is returned unchanged.
    Raises :class:`InjectionError` when the pod has no app container or no writable volume
    holding the database.
    """
    result = copy.deepcopy(dict(pod))
    if _already_injected(result):
        return result
    spec = replica["spec"]
    name = replica["metadata"]["name"]
    pod_spec = result.setdefault("spec", {})
    app = _app_container(pod_spec, spec)
    db_mount = _database_mount(pod_spec, app, spec["database"])
    agent_spec = spec.get("agent") or {}
    port = int(agent_spec.get("metricsPort", specs.DEFAULT_METRICS_PORT))
    _check_port_free(pod_spec, port)

    base = _base_container(pod_spec, app, spec, name, db_mount, default_image)
    restore = _restore_container(base, spec)
    agent = _agent_container(base, port)

    init_containers = pod_spec.setdefault("initContainers", [])
    native = agent_spec.get("nativeSidecar", native_sidecar)
    ours = ([restore] if restore else []) + ([{**agent, "restartPolicy": "Always"}] if native else [])
    init_containers[:0] = ours
    if not native:
        pod_spec["containers"].append(agent)
    if not init_containers:
        del pod_spec["initContainers"]
    pod_spec.setdefault("volumes", []).extend(_volumes(spec, name))

    annotations = result.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[specs.INJECTED_ANNOTATION] = name
    # Never override the app's own scrape settings: its metrics matter more than ours.
    annotations.setdefault("prometheus.io/scrape", "true")
    annotations.setdefault("prometheus.io/port", str(port))
    annotations.setdefault("prometheus.io/path", "/metrics")
    return result


def _already_injected(pod: Mapping[str, Any]) -> bool:
    if specs.INJECTED_ANNOTATION in (pod.get("metadata", {}).get("annotations") or {}):
        return True
    return any(c.get("name") == AGENT_CONTAINER for c in _all_containers(pod.get("spec", {})))


def _all_containers(pod_spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return (pod_spec.get("containers") or []) + (pod_spec.get("initContainers") or [])


def _app_container(pod_spec: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    containers = pod_spec.get("containers") or []
    wanted = spec.get("container")
    if wanted:
        for container in containers:
            if container.get("name") == wanted:
                return container
        raise InjectionError(f"pod has no container {wanted!r} (SQLiteReplica spec.container)")
    holders = [c for c in containers if _longest_mount(c, spec["database"]) is not None]
    if len(holders) == 1:
        return holders[0]
    if not holders:
        raise InjectionError(
            f"database {spec['database']} is on no volume mounted by any container: "
            "mount a volume at its directory (or a parent) in the app container")
    names = ", ".join(c["name"] for c in holders)
    raise InjectionError(f"containers {names} all mount {spec['database']}: set spec.container to the app's")


def _longest_mount(container: Mapping[str, Any], database: str) -> dict[str, Any] | None:
    """The volume mount whose mountPath is the longest directory prefix of ``database``."""
    best: dict[str, Any] | None = None
    best_length = -1
    for mount in container.get("volumeMounts") or []:
        path = posixpath.normpath(mount["mountPath"])
        prefix = path if path.endswith("/") else path + "/"
        if database.startswith(prefix) and len(path) > best_length:
            best, best_length = mount, len(path)
    return best


def _database_mount(pod_spec: Mapping[str, Any], app: Mapping[str, Any], database: str) -> dict[str, Any]:
    mount = _longest_mount(app, database)
    if mount is None:
        raise InjectionError(
            f"database {database} is on no volume of container {app['name']!r}: "
            "mount a volume at its directory (or a parent); a container's root filesystem is not replicable")
    if mount.get("readOnly"):
        raise InjectionError(
            f"volume {mount['name']!r} holding {database} is mounted read-only in container {app['name']!r}: "
            "the agent must write beside the database")
    if not any(v.get("name") == mount["name"] for v in pod_spec.get("volumes") or []):
        raise InjectionError(f"volume mount {mount['name']!r} for {database} names no volume of the pod")
    # The same volume, at the same path, with the same subPath: the agent sees the file the app writes,
    # and keeps its meta directory beside it (so local state lives and dies with the database).
    keep = ("name", "mountPath", "subPath", "subPathExpr", "mountPropagation")
    return {key: mount[key] for key in keep if key in mount}


def _check_port_free(pod_spec: Mapping[str, Any], port: int) -> None:
    for container in _all_containers(pod_spec):
        for declared in container.get("ports") or []:
            if declared.get("containerPort") == port:
                raise InjectionError(
                    f"container {container['name']!r} already uses port {port}: "
                    "set spec.agent.metricsPort to a free port")


def _security_context(pod_spec: Mapping[str, Any], app: Mapping[str, Any]) -> dict[str, Any]:
    # Run as the app's user and group when it names them (and they are not root), so the agent can
    # write the database, its -wal and -shm files; else the pod-level settings (fsGroup) apply.
    context: dict[str, Any] = {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    app_context = app.get("securityContext") or {}
    pod_context = pod_spec.get("securityContext") or {}
    for field in ("runAsUser", "runAsGroup"):
        value = app_context.get(field, pod_context.get(field))
        if value:
            context[field] = value
    context.setdefault("runAsUser", DEFAULT_UID)
    return context


def _base_container(
    pod_spec: Mapping[str, Any],
    app: Mapping[str, Any],
    spec: Mapping[str, Any],
    name: str,
    db_mount: Mapping[str, Any],
    default_image: str,
) -> dict[str, Any]:
    """What the restore and agent containers share: image, mounts, credentials, security."""
    agent_spec = spec.get("agent") or {}
    mounts: list[dict[str, Any]] = [
        dict(db_mount),
        {"name": CONFIG_VOLUME, "mountPath": agent_config.CONFIG_DIR, "readOnly": True},
        {"name": TMP_VOLUME, "mountPath": "/tmp"},
    ]
    container: dict[str, Any] = {
        "image": agent_spec.get("image") or default_image,
        "imagePullPolicy": agent_spec.get("imagePullPolicy", "IfNotPresent"),
        "securityContext": _security_context(pod_spec, app),
        "resources": copy.deepcopy(agent_spec.get("resources") or DEFAULT_RESOURCES),
        "volumeMounts": mounts,
    }
    credentials = (spec["replica"].get("credentials") or {}).get("secretName")
    if credentials and specs.scheme(spec["replica"]["url"]) == "gs":
        # GCS reads a key *file*: mount the Secret and point the standard variable at it.
        mounts.append({"name": GCS_VOLUME, "mountPath": GCS_MOUNT, "readOnly": True})
        container["env"] = [{"name": "GOOGLE_APPLICATION_CREDENTIALS",
                             "value": f"{GCS_MOUNT}/{specs.GCS_CREDENTIALS_KEY}"}]
    elif credentials:
        container["envFrom"] = [{"secretRef": {"name": credentials}}]
    return container


def _restore_container(base: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any] | None:
    restore = spec.get("restore") or {}
    if not restore.get("enabled", True):
        return None
    args = ["restore", "-if-db-not-exists", "-if-replica-exists", "-config", agent_config.CONFIG_PATH]
    if restore.get("timestamp"):
        args += ["-timestamp", restore["timestamp"]]
    elif restore.get("txid"):
        args += ["-txid", restore["txid"]]
    return {"name": RESTORE_CONTAINER, **copy.deepcopy(dict(base)),
            "command": ["lifeboat"], "args": [*args, spec["database"]],
            # A failed restore's error line becomes the termination message, which the operator
            # repeats in the SQLiteReplica's Restored condition.
            "terminationMessagePolicy": "FallbackToLogsOnError"}


def _agent_container(base: Mapping[str, Any], port: int) -> dict[str, Any]:
    return {
        "name": AGENT_CONTAINER,
        **copy.deepcopy(dict(base)),
        "command": ["lifeboat"],
        "args": ["replicate", "-config", agent_config.CONFIG_PATH],
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        # Started = the HTTP server is up, i.e. the database is open. No readiness probe on purpose:
        # a replica outage must not take the app out of its Service; it shows in the SQLiteReplica's
        # Ready condition and in the metrics instead.
        "startupProbe": _healthz_probe(period=1, failures=120),
        "livenessProbe": _healthz_probe(period=10, failures=3),
    }


def _healthz_probe(*, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": "/healthz", "port": METRICS_PORT_NAME},
            "periodSeconds": period, "failureThreshold": failures}


def _volumes(spec: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "configMap": {"name": specs.configmap_name(name)}},
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    credentials = (spec["replica"].get("credentials") or {}).get("secretName")
    if credentials and specs.scheme(spec["replica"]["url"]) == "gs":
        volumes.append({"name": GCS_VOLUME, "secret": {"secretName": credentials}})
    return volumes
