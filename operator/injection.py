"""Pod + SQLiteReplica → the pod with the restore init container and the replication agent. Pure.

The admission webhook calls :func:`inject` on every labelled pod at CREATE; the function does no I/O,
so the whole contract (ordering, volumes, security contexts, idempotence, denials) is unit-tested.

Which user the injected containers run as: the app container's ``runAsUser``/``runAsGroup``, else the
pod's, so the agent and the app own the database, its ``-wal`` and ``-shm`` alike. A uid the app takes
from its image only is invisible here: the agent then runs as the image's 65532, and :func:`warnings`
tells the user creating the pod to name the app's uid (kubectl prints it; the pod is still admitted).
"""

import pickle
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from lifeboat.operator import agent_config, mesh
from lifeboat.operator import spec as specs

DEFAULT_IMAGE = "ghcr.io/lifeboat-dev/lifeboat-agent:0.1.0"
RESTORE_CONTAINER = "lifeboat-restore"
AGENT_CONTAINER = "lifeboat-agent"
# A read replica's sidecar: `lifeboat restore -f` into the pod's volume. Another name than the
# writer's agent, so nothing that counts writers (the single-writer guard) counts it.
FOLLOW_CONTAINER = "lifeboat-follow"
CONFIG_VOLUME = "lifeboat-config"
TMP_VOLUME = "lifeboat-tmp"
GCS_VOLUME = "lifeboat-gcs-credentials"
GCS_MOUNT = "/var/run/secrets/lifeboat"
METRICS_PORT_NAME = "lifeboat-http"
TMP_PATH = "/tmp"
# The uid the image creates; used when neither the app container nor the pod names one.
DEFAULT_UID = 65532
# Limits for both CPU and memory: a namespace ResourceQuota on limits.cpu/limits.memory refuses
# containers without them. Half a CPU: below the maximum a LimitRange commonly sets per container.
DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"cpu": "500m", "memory": "256Mi"},
}
# Bidirectional propagation needs a privileged container; the injected ones never are. Seeing the
# host's later mounts (HostToContainer) is all the agent needs to see the same files as the app.
_UNPRIVILEGED_PROPAGATION = {"Bidirectional": "HostToContainer"}
# $(NAME) in subPathExpr and env values; $$(NAME) is an escaped literal.
_VARIABLE_REFERENCE = re.compile(r"(?<!\$)\$\(([^)]+)\)")


class InjectionError(Exception):
    """The pod cannot be injected; the message is meant for the user who created it."""


def wants_injection(labels: Mapping[str, str], **_: Any) -> bool:
    """Whether a pod asks for injection: it carries the writer's or the follower's label."""
    return specs.REPLICA_LABEL in labels or specs.FOLLOW_LABEL in labels


def target(labels: Mapping[str, str]) -> tuple[str, bool]:
    """(SQLiteReplica name, whether the pod is a follower) from a pod's labels.

    Raises :class:`InjectionError` for a pod with both labels: it would be a writer and a reader of
    the same database at once.
    """
    if specs.REPLICA_LABEL in labels and specs.FOLLOW_LABEL in labels:
        raise InjectionError(
            f"pod carries both {specs.REPLICA_LABEL} (the one writer) and {specs.FOLLOW_LABEL} (a read "
            "replica): keep one label; a follower only reads the database its SQLiteReplica's writer uploads")
    if specs.FOLLOW_LABEL in labels:
        return labels[specs.FOLLOW_LABEL], True
    return labels[specs.REPLICA_LABEL], False


def inject(
    pod: Mapping[str, Any],
    replica: Mapping[str, Any],
    *,
    native_sidecar: bool = True,
    default_image: str = DEFAULT_IMAGE,
    follower: bool = False,
) -> dict[str, Any]:
    """Return a copy of ``pod`` with the restore init container and the agent added.

    ``replica`` is the whole SQLiteReplica object. ``native_sidecar`` is the operator's default,
    overridden by ``spec.agent.nativeSidecar``. A pod already injected is returned unchanged.
    With ``follower``, the pod is a read replica: its restore always fetches the latest state, and
    the sidecar follows the replica (``restore -f``) instead of replicating; its app container may
    mount the database read-only.
    Raises :class:`InjectionError` when the pod has no app container or no writable volume
    holding the database.
    """
    result = copy_json(pod)
    if _already_injected(result):
        return result
    spec = replica["spec"]
    name = replica["metadata"]["name"]
    pod_spec = result.setdefault("spec", {})
    app = _app_container(pod_spec, spec)
    db_mount = _database_mount(pod_spec, app, spec["database"], read_only_app=follower)
    agent_spec = spec.get("agent") or {}
    port = int(agent_spec.get("metricsPort", specs.DEFAULT_METRICS_PORT))
    _check_port_free(pod_spec, port)

    base = _base_container(pod_spec, app, spec, name, db_mount, default_image)
    expansion = _expansion_env(app, db_mount)
    if expansion:
        base["env"] = expansion + base.get("env", [])
    restore = _follower_restore_container(base, spec) if follower else _restore_container(base, spec)
    agent = _follow_container(base, spec, port) if follower else _agent_container(base, port)

    init_containers = pod_spec.setdefault("initContainers", [])
    native = agent_spec.get("nativeSidecar", native_sidecar)
    ours = ([restore] if restore else []) + ([{**agent, "restartPolicy": "Always"}] if native else [])
    at = mesh.insertion_index(init_containers)
    init_containers[at:at] = ours
    if not native:
        pod_spec["containers"].append(agent)
    if not init_containers:
        del pod_spec["initContainers"]
    pod_spec.setdefault("volumes", []).extend(_volumes(spec, name))

    annotations = result.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[specs.INJECTED_ANNOTATION] = name
    mesh.exclude_inbound_port(annotations, port)
    # Never override the app's own scrape settings: its metrics matter more than ours.
    annotations.setdefault("prometheus.io/scrape", "true")
    annotations.setdefault("prometheus.io/port", str(port))
    annotations.setdefault("prometheus.io/path", "/metrics")
    return result


def warnings(pod: Mapping[str, Any], replica: Mapping[str, Any]) -> list[str]:
    """What the user creating ``pod`` should hear about an injection that goes through.

    An app whose uid comes only from its image (no ``runAsUser`` on the container or the pod) gets an
    agent running as the image default 65532, which may create files the app cannot write.
    """
    if _already_injected(pod):
        return []
    pod_spec = pod.get("spec") or {}
    app = _app_container(pod_spec, replica["spec"])
    if _named_ids(pod_spec, app).get("runAsUser"):
        return []
    return [f"container {app['name']!r} and its pod set no securityContext.runAsUser: the lifeboat agent "
            f"runs as uid {DEFAULT_UID} and may create database files the app cannot write; set runAsUser "
            "(and runAsGroup) to the app image's uid/gid so the agent inherits them"]


def copy_json(value: Any) -> Any:
    """A deep copy of a JSON value, as ``copy.deepcopy`` makes it, in a third of its time: every admission
    copies a pod and the containers it adds. (Only what was pickled here is unpickled.)"""
    return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))


def _already_injected(pod: Mapping[str, Any]) -> bool:
    if specs.INJECTED_ANNOTATION in (pod.get("metadata", {}).get("annotations") or {}):
        return True
    return any(c.get("name") in (AGENT_CONTAINER, FOLLOW_CONTAINER) for c in _all_containers(pod.get("spec", {})))


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


def _database_mount(
    pod_spec: Mapping[str, Any], app: Mapping[str, Any], database: str, *, read_only_app: bool = False
) -> dict[str, Any]:
    mount = _longest_mount(app, database)
    if mount is None:
        raise InjectionError(
            f"database {database} is on no volume of container {app['name']!r}: "
            "mount a volume at its directory (or a parent); a container's root filesystem is not replicable")
    # A follower's app only reads; our copy of the mount is writable either way (readOnly is not kept).
    if mount.get("readOnly") and not read_only_app:
        raise InjectionError(
            f"volume {mount['name']!r} holding {database} is mounted read-only in container {app['name']!r}: "
            "the agent must write beside the database")
    if not any(v.get("name") == mount["name"] for v in pod_spec.get("volumes") or []):
        raise InjectionError(f"volume mount {mount['name']!r} for {database} names no volume of the pod")
    path = posixpath.normpath(mount["mountPath"])
    for reserved in (agent_config.CONFIG_DIR, GCS_MOUNT):
        if path == reserved:
            raise InjectionError(f"volume {mount['name']!r} holding {database} is mounted at {reserved}, "
                                 "where the lifeboat containers mount their own files: move the database")
    # The same volume, at the same path, with the same subPath: the agent sees the file the app writes,
    # and keeps its meta directory beside it (so local state lives and dies with the database).
    keep = ("name", "mountPath", "subPath", "subPathExpr", "mountPropagation")
    copied = {key: mount[key] for key in keep if key in mount}
    if "mountPropagation" in copied:
        propagation = copied["mountPropagation"]
        copied["mountPropagation"] = _UNPRIVILEGED_PROPAGATION.get(propagation, propagation)
    return copied


def _expansion_env(app: Mapping[str, Any], db_mount: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The app's env entries the mount's ``subPathExpr`` needs, directly or through other entries.

    The kubelet expands ``subPathExpr`` with the container's own variables: without these, the agent
    would mount another directory than the app's.
    """
    env = app.get("env") or []
    wanted = set(_VARIABLE_REFERENCE.findall(db_mount.get("subPathExpr", "")))
    needed: set[int] = set()
    # An entry may refer to earlier ones ($(A) in B's value); the last definition of a name wins.
    for index in range(len(env) - 1, -1, -1):
        if env[index]["name"] in wanted:
            wanted.discard(env[index]["name"])
            needed.add(index)
            wanted |= set(_VARIABLE_REFERENCE.findall(env[index].get("value", "")))
    missing = sorted(wanted - {e["name"] for e in env})
    if missing:
        names = ", ".join(f"$({n})" for n in missing)
        raise InjectionError(
            f"volume mount {db_mount['name']!r} of container {app['name']!r}: subPathExpr refers to {names}, "
            "not defined in the container's env (variables from envFrom are not given to the lifeboat "
            "containers): define it in env")
    return [copy_json(env[i]) for i in sorted(needed)]


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
    context.update(_named_ids(pod_spec, app))
    context.setdefault("runAsUser", DEFAULT_UID)
    return context


def _named_ids(pod_spec: Mapping[str, Any], app: Mapping[str, Any]) -> dict[str, int]:
    """runAsUser and runAsGroup as the app container runs with them, where the pod spec names them
    (the container's setting first, then the pod's); root (0) is never inherited."""
    app_context = app.get("securityContext") or {}
    pod_context = pod_spec.get("securityContext") or {}
    named: dict[str, int] = {}
    for field in ("runAsUser", "runAsGroup"):
        value = app_context.get(field, pod_context.get(field))
        if value:
            named[field] = value
    return named


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
    ]
    # A database volume at /tmp is writable scratch space already; a second mount there is invalid.
    if posixpath.normpath(db_mount["mountPath"]) != TMP_PATH:
        mounts.append({"name": TMP_VOLUME, "mountPath": TMP_PATH})
    container: dict[str, Any] = {
        "image": agent_spec.get("image") or default_image,
        "imagePullPolicy": agent_spec.get("imagePullPolicy", "IfNotPresent"),
        "securityContext": _security_context(pod_spec, app),
        "resources": copy_json(agent_spec.get("resources") or DEFAULT_RESOURCES),
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
    return _restore_with(base, spec, args)


def _follower_restore_container(base: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    # Always the latest state (spec.restore picks the writer's point in time), left as follow mode
    # resumes from it; a replica without a backup yet is skipped and the sidecar waits for one.
    args = ["restore", "-if-db-not-exists", "-if-replica-exists", "-follow-ready", "-config", agent_config.CONFIG_PATH]
    return _restore_with(base, spec, args)


def _restore_with(base: Mapping[str, Any], spec: Mapping[str, Any], args: list[str]) -> dict[str, Any]:
    return {"name": RESTORE_CONTAINER, **copy_json(base),
            "command": ["lifeboat"], "args": [*args, spec["database"]],
            # A failed restore's error line becomes the termination message, which the operator
            # repeats in the SQLiteReplica's Restored condition.
            "terminationMessagePolicy": "FallbackToLogsOnError"}


def _agent_container(base: Mapping[str, Any], port: int) -> dict[str, Any]:
    return {
        "name": AGENT_CONTAINER,
        **copy_json(base),
        "command": ["lifeboat"],
        "args": ["replicate", "-config", agent_config.CONFIG_PATH],
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        # Started = the HTTP server is up, i.e. the database is open. No readiness probe on purpose:
        # a replica outage must not take the app out of its Service; it shows in the SQLiteReplica's
        # Ready condition and in the metrics instead.
        "startupProbe": _healthz_probe(period=1, failures=120),
        "livenessProbe": _healthz_probe(period=10, failures=3),
    }


def _follow_container(base: Mapping[str, Any], spec: Mapping[str, Any], port: int) -> dict[str, Any]:
    interval = spec.get("followInterval") or specs.DEFAULT_FOLLOW_INTERVAL
    return {
        "name": FOLLOW_CONTAINER,
        **copy_json(base),
        "command": ["lifeboat"],
        "args": ["restore", "-f", "-follow-interval", interval, "-config", agent_config.CONFIG_PATH,
                 spec["database"]],
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        # /readyz turns 200 once the first restore is done: the app starts only then (startup probe
        # of a native sidecar), and a Service sends reads only to followers that have the data.
        "startupProbe": _probe("/readyz", period=1, failures=600),
        "readinessProbe": _probe("/readyz", period=5, failures=1),
        "livenessProbe": _healthz_probe(period=10, failures=3),
    }


def _healthz_probe(*, period: int, failures: int) -> dict[str, Any]:
    return _probe("/healthz", period=period, failures=failures)


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": METRICS_PORT_NAME},
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
