"""SQLiteReplica spec → the agent's YAML config (Litestream 0.5 keys). Pure.

The rendered config goes into a ConfigMap, so it never holds a secret value: credentials reach the
agent as environment variables from the referenced Secret, and where the config must name one it
does so by reference (``${VAR}``), which the agent expands at start-up.
"""

from collections.abc import Mapping
from typing import Any

import yaml
from lifeboat.operator import spec as specs

CONFIG_DIR = "/etc/lifeboat"
CONFIG_FILE = "lifeboat.yml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"

# Secret-held values the config refers to by name (the agent expands them from its environment);
# an unset variable expands to empty, which the agent reads as "not configured".
_SECRET_REFERENCES: dict[str, dict[str, str]] = {
    "sftp": {"password": "${SFTP_PASSWORD}"},
}


def build(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The agent config as a mapping, for one SQLiteReplica spec."""
    replica_spec = spec["replica"]
    kind = specs.scheme(replica_spec["url"])
    replica: dict[str, Any] = {"url": replica_spec["url"]}
    for option, key in specs.BACKEND_OPTIONS.get(kind, {}).items():
        if replica_spec.get(option) is not None:
            replica[key] = replica_spec[option]
    if replica_spec.get("credentials"):
        replica.update(_SECRET_REFERENCES.get(kind, {}))
    if spec.get("syncInterval"):
        replica["sync-interval"] = spec["syncInterval"]

    port = (spec.get("agent") or {}).get("metricsPort", specs.DEFAULT_METRICS_PORT)
    config: dict[str, Any] = {"addr": f":{port}"}
    if spec.get("paused"):
        # Running agents reload the ConfigMap and stop capturing and uploading; no restart.
        config["paused"] = True
    snapshot_spec = spec.get("snapshot") or {}
    snapshot = {key: snapshot_spec[key] for key in ("interval", "retention") if snapshot_spec.get(key)}
    if snapshot:
        config["snapshot"] = snapshot
    config["dbs"] = [{"path": spec["database"], "replica": replica}]
    return config


def render(spec: Mapping[str, Any]) -> str:
    """The agent config as YAML text, ready for a ConfigMap key."""
    return yaml.safe_dump(build(spec), sort_keys=False, default_flow_style=False)
