"""The SQLiteReplica resource: its names, defaults, and the consistency checks of a stored spec.

Everything here is pure: a spec is the plain mapping found in ``SQLiteReplica.spec``.
"""

import re
from collections.abc import Collection, Mapping
from typing import Any

GROUP = "lifeboat.dev"
VERSION = "v1alpha1"
PLURAL = "sqlitereplicas"
KIND = "SQLiteReplica"

# The label a pod carries to opt in; its value names the SQLiteReplica in the pod's namespace.
REPLICA_LABEL = "lifeboat.dev/replica"
# Set on injected pods: the idempotence marker, and a hint for humans reading the pod.
INJECTED_ANNOTATION = "lifeboat.dev/injected"

DEFAULT_METRICS_PORT = 9090
DEFAULT_MAX_LAG = "1m"

# Backend options per URL scheme: the CRD's camelCase name → the agent's (Litestream's) config key.
BACKEND_OPTIONS: dict[str, dict[str, str]] = {
    "s3": {"endpoint": "endpoint", "region": "region", "forcePathStyle": "force-path-style",
           "skipVerify": "skip-verify"},
    "abs": {"endpoint": "endpoint", "accountName": "account-name"},
    "sftp": {"hostKey": "host-key", "keyPath": "key-path"},
    "gs": {},
    "nats": {},
    "file": {},
}
ALL_OPTIONS = frozenset(name for options in BACKEND_OPTIONS.values() for name in options)

# Keys the credentials Secret must hold, per scheme. SFTP and NATS credentials are optional
# (key files, tokens in the URL-less config), so nothing is required of them.
GCS_CREDENTIALS_KEY = "credentials.json"
REQUIRED_SECRET_KEYS: dict[str, tuple[str, ...]] = {
    "s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    "abs": ("LITESTREAM_AZURE_ACCOUNT_KEY",),
    "gs": (GCS_CREDENTIALS_KEY,),
}

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def configmap_name(replica_name: str) -> str:
    """Name of the ConfigMap holding the agent config rendered for the named SQLiteReplica."""
    return f"{replica_name}-lifeboat"


def scheme(url: str) -> str:
    """The URL scheme of a replica URL (``s3``, ``gs``, ...), lower-cased."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration such as ``1m30s`` (the syntax the CRD schema admits)."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def max_lag_seconds(spec: Mapping[str, Any]) -> float:
    """The lag beyond which a pod's replication is not Ready."""
    return parse_duration(spec.get("maxLag") or DEFAULT_MAX_LAG)


def problems(spec: Mapping[str, Any]) -> list[str]:
    """What is wrong with a spec; empty when it is consistent.

    The CRD's schema (patterns and CEL rules) refuses all of it at apply time; this re-checks objects
    stored before a rule existed or was tightened (the API server keeps them), which then get
    ``ConfigReady=False`` instead of an agent config.
    """
    found: list[str] = []
    replica = spec.get("replica") or {}
    kind = scheme(replica.get("url", ""))
    if kind not in BACKEND_OPTIONS:
        allowed = ", ".join(BACKEND_OPTIONS)
        found.append(f"replica.url {replica.get('url')!r}: scheme must be one of {allowed}")
    else:
        for option in sorted(ALL_OPTIONS & set(replica)):
            if option not in BACKEND_OPTIONS[kind]:
                owners = [f"{s}://" for s, names in BACKEND_OPTIONS.items() if option in names]
                found.append(f"replica.{option} applies to {' and '.join(owners)} URLs, not {kind}://")
    restore = spec.get("restore") or {}
    if restore.get("timestamp") and restore.get("txid"):
        found.append("restore.timestamp and restore.txid are exclusive: pick one point in time")
    for field in ("syncInterval", "maxLag"):
        if spec.get(field) is not None:
            try:
                parse_duration(spec[field])
            except ValueError:
                found.append(f"{field}: {spec[field]!r} is not a duration like 1s or 1m30s")
    return found


def secret_problems(spec: Mapping[str, Any], secret_keys: Collection[str]) -> list[str]:
    """Keys the referenced credentials Secret lacks for the replica's scheme (names only, never values)."""
    kind = scheme((spec.get("replica") or {}).get("url", ""))
    missing = [key for key in REQUIRED_SECRET_KEYS.get(kind, ()) if key not in secret_keys]
    if not missing:
        return []
    return [f"Secret lacks key(s) {', '.join(missing)} needed for {kind}:// replicas"]
