"""The agent's YAML configuration: Litestream 0.5's keys, validated strictly.

An existing `litestream.yml` loads unchanged. Where Litestream silently ignores a key (yaml.v2 in
non-strict mode), Lifeboat refuses it with a `ConfigError` naming the file and the key path, because
a typo otherwise loses a setting without a word. Keys that Litestream accepts but no longer uses
(0.3 leftovers) only log a warning on the `lifeboat.config` logger.

Everything here is pure: `load_config` reads one file, the rest only looks at its arguments and
the environment (for `$VAR` expansion and `LOG_LEVEL`). Durations are float seconds and sizes
int bytes throughout.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .config_values import expand_env, parse_duration, parse_size
from .config_yaml import Scalar, load_yaml
from .storage import ConfigError, parse_replica_url, replica_type

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "META_DIR_SUFFIX",
    "SECRET_KEYS",
    "Config",
    "ConfigError",
    "DBConfig",
    "ReplicaConfig",
    "config_for_db",
    "default_config_path",
    "expand_env",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
]

log = logging.getLogger("lifeboat.config")

DEFAULT_CONFIG_PATH = "/etc/litestream.yml"
META_DIR_SUFFIX = "-litestream"  # Litestream's MetaDirSuffix: the Go binary and Lifeboat share state.
DEFAULT_SOCKET_PATH = "/var/run/litestream.sock"
DEFAULT_TRUNCATE_PAGE_N = 121359  # about 500 MB of WAL at 4 KiB pages
MAX_LEVELS = 8  # non-snapshot levels L1..L8; L9 is the snapshot level.

# Replica settings whose values must never reach a log line, an error message or a repr.
SECRET_KEYS = frozenset(
    {
        "secret-access-key",
        "account-key",
        "password",
        "sas-token",
        "sse-customer-key",
        "token",
        "seed",
        "nkey",
        "jwt",
        "webdav-password",
    }
)
REDACTED = "REDACTED"
_SECRET_QUERY_KEYS = {k.replace("-", "") for k in SECRET_KEYS} | {
    "sig",
    "secret",
    "secretkey",
    "accesskeysecret",
}

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
MIN_INTERVAL = 0.001  # below 1 ms an interval is a mistake (e.g. a bare number read as nanoseconds)

def default_config_path() -> str:
    """`$LITESTREAM_CONFIG`, else `$LIFEBOAT_CONFIG`, else `/etc/litestream.yml`."""
    return os.environ.get("LITESTREAM_CONFIG") or os.environ.get("LIFEBOAT_CONFIG") or DEFAULT_CONFIG_PATH


# ---------------------------------------------------------------------------------------------
# Typed result
# ---------------------------------------------------------------------------------------------


def _redact_url(url: str) -> str:
    """The URL with any userinfo password and secret-looking query values replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":" + REDACTED
        netloc = f"{userinfo}@{hostport}"
    query = parts.query
    if query:
        items = []
        for k, v in parse_qsl(query, keep_blank_values=True):
            compact = re.sub(r"[-_]", "", k.lower())
            items.append(f"{k}={REDACTED if compact in _SECRET_QUERY_KEYS else v}")
        query = "&".join(items)
    out = f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else parts.path
    if query:
        out += f"?{query}"
    if parts.fragment:
        out += f"#{parts.fragment}"
    return out


def _redact_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if k in SECRET_KEYS and v not in (None, ""):
            out[k] = REDACTED
        elif k == "url" and isinstance(v, str):
            out[k] = _redact_url(v)
        else:
            out[k] = v
    return out


@dataclass(slots=True, repr=False)
class ReplicaConfig:
    """One database's replica.

    `settings` is the replica block with Litestream's kebab-case keys (url, type, path, bucket,
    endpoint, region, ...) after validation and env expansion, with the top-level inline replica
    settings merged in as defaults; values are typed (str, bool, int, list[str]; durations float
    seconds, sizes int bytes). `sync-interval`, `max-sync-ltx-files` and `auto-recover` are lifted
    into fields. Its repr redacts secrets; use `redacted()` for logging or status output.
    """

    settings: dict[str, Any] = field(default_factory=dict)
    sync_interval: float = 1.0
    max_sync_ltx_files: int = 256
    auto_recover: bool = False

    @property
    def type(self) -> str:
        """The backend: `file`, `s3`, `gs`, `abs`, `sftp` or `nats` (from `url:` or `type:`)."""
        return replica_type(self.settings)

    @property
    def url(self) -> str | None:
        """The `url:` setting, or None when the replica is given by type and components."""
        value = self.settings.get("url")
        return str(value) if value else None

    def redacted(self) -> dict[str, Any]:
        """A copy of `settings` with secret values (and a URL's password) replaced by REDACTED."""
        return _redact_settings(self.settings)

    def __repr__(self) -> str:
        try:
            kind = self.type
        except ConfigError:
            kind = "?"
        return (
            f"ReplicaConfig(type={kind!r}, settings={self.redacted()!r},"
            f" sync_interval={self.sync_interval!r}, max_sync_ltx_files={self.max_sync_ltx_files!r},"
            f" auto_recover={self.auto_recover!r})"
        )


@dataclass(slots=True)
class DBConfig:
    """One database: its path, local state location, checkpoint policy and replica."""

    path: str
    meta_path: str | None = None
    monitor_interval: float = 1.0
    checkpoint_interval: float = 60.0
    busy_timeout: float = 1.0
    min_checkpoint_page_count: int = 1000
    truncate_page_n: int = DEFAULT_TRUNCATE_PAGE_N
    max_sync_wal_bytes: int = 64 * 1024 * 1024
    restore_if_db_not_exists: bool = False
    replica: ReplicaConfig | None = None

    def meta_dir(self) -> str:
        """`meta-path`, else Litestream's `<dir>/.<basename>-litestream` (shared with the Go binary)."""
        if self.meta_path:
            return self.meta_path
        head, tail = os.path.split(self.path)
        return os.path.join(head, f".{tail}{META_DIR_SUFFIX}")


@dataclass(slots=True)
class Config:
    """The whole agent configuration (Litestream's `Config`), defaults filled in."""

    dbs: list[DBConfig] = field(default_factory=list)
    addr: str | None = None
    levels: list[float] = field(default_factory=lambda: [30.0, 300.0, 3600.0])
    snapshot_interval: float = DAY
    snapshot_retention: float = DAY
    l0_retention: float = 300.0
    l0_retention_check_interval: float = 15.0
    retention_enabled: bool = True
    validation_interval: float | None = None
    verify_compaction: bool = False
    logging_level: str = "info"
    logging_type: str = "text"
    logging_stderr: bool = False
    logging_source: bool = False
    shutdown_sync_timeout: float = 30.0
    shutdown_sync_interval: float = 0.5
    heartbeat_url: str | None = None
    heartbeat_interval: float = 300.0
    exec: str | None = None
    socket_enabled: bool = False
    socket_path: str = DEFAULT_SOCKET_PATH
    socket_permissions: int = 0o600
    mcp_addr: str | None = None
    paused: bool = False  # Lifeboat's own key: keep following nothing, ship nothing, until unset
    source: str = "<args>"

    def db(self, path: str) -> DBConfig | None:
        """The database configured at `path` (after `~` and relative-path expansion), if any."""
        wanted = _expand_path(path)
        return next((d for d in self.dbs if d.path == wanted), None)


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------

# kind: "str" | "bool" | "int" | "duration" | "size" | "strlist"
_REPLICA_KEYS: dict[str, str] = {
    "type": "str",
    "url": "str",
    "path": "str",
    "sync-interval": "duration",
    "max-sync-ltx-files": "int",
    "auto-recover": "bool",
    # S3 (and OSS)
    "access-key-id": "str",
    "secret-access-key": "str",
    "region": "str",
    "bucket": "str",
    "endpoint": "str",
    "force-path-style": "bool",
    "sign-payload": "bool",
    "require-content-md5": "bool",
    "skip-verify": "bool",
    "storage-class": "str",
    "part-size": "size",
    "concurrency": "int",
    "sse-customer-algorithm": "str",
    "sse-customer-key": "str",
    "sse-customer-key-path": "str",
    "sse-kms-key-id": "str",
    # Azure Blob Storage
    "account-name": "str",
    "account-key": "str",
    "sas-token": "str",
    # SFTP
    "host": "str",
    "user": "str",
    "password": "str",
    "key-path": "str",
    "host-key": "str",
    "insecure-ignore-host-key": "bool",
    "concurrent-writes": "bool",
    # WebDAV (Litestream only)
    "webdav-url": "str",
    "webdav-username": "str",
    "webdav-password": "str",
    # NATS
    "jwt": "str",
    "seed": "str",
    "creds": "str",
    "nkey": "str",
    "username": "str",
    "token": "str",
    "tls": "bool",
    "root-cas": "strlist",
    "client-cert": "str",
    "client-key": "str",
    "max-reconnects": "int",
    "reconnect-wait": "duration",
    "timeout": "duration",
}
# Keys only valid inside a replica block, not as top-level defaults (Litestream's ReplicaConfig).
_REPLICA_ONLY = {"type", "url", "path"}
# Accepted by Litestream, never used by 0.5: a warning.
_IGNORED_REPLICA_KEYS = {
    "name": "deprecated and unused",
    "validation-interval": "parsed but unused by Litestream 0.5; use validation.interval",
    "snapshot-interval": "a Litestream 0.3 setting; use the top-level snapshot.interval",
    "retention": "a Litestream 0.3 setting; use the top-level snapshot.retention",
    "retention-check-interval": "a Litestream 0.3 setting, unused by 0.5",
}
_IGNORED_GLOBAL_KEYS = {"validation-interval": _IGNORED_REPLICA_KEYS["validation-interval"]}
_IGNORED_DB_KEYS = {"max-checkpoint-page-count": "a Litestream 0.3 setting, unused by 0.5"}

_COMMON_REPLICA = {"type", "url", "path", "sync-interval", "max-sync-ltx-files", "auto-recover", "age"}
_S3_KEYS = {
    "access-key-id",
    "secret-access-key",
    "region",
    "bucket",
    "endpoint",
    "force-path-style",
    "sign-payload",
    "require-content-md5",
    "skip-verify",
    "storage-class",
    "part-size",
    "concurrency",
    "sse-customer-algorithm",
    "sse-customer-key",
    "sse-customer-key-path",
    "sse-kms-key-id",
}
_BACKEND_KEYS: dict[str, set[str]] = {
    "file": set(),
    "s3": _S3_KEYS,
    "gs": {"bucket"},
    "abs": {"account-name", "account-key", "sas-token", "endpoint", "bucket"},
    "sftp": {"host", "user", "password", "key-path", "host-key", "insecure-ignore-host-key", "concurrent-writes"},
    "nats": {
        "bucket",
        "jwt",
        "seed",
        "creds",
        "nkey",
        "username",
        "password",
        "token",
        "tls",
        "root-cas",
        "client-cert",
        "client-key",
        "max-reconnects",
        "reconnect-wait",
        "timeout",
    },
}
_SUPPORTED_TYPES = tuple(_BACKEND_KEYS)
_UNSUPPORTED_TYPES = {
    "webdav": "WebDAV replicas are not supported by lifeboat",
    "webdavs": "WebDAV replicas are not supported by lifeboat",
    "oss": "Alibaba OSS replicas are not supported by lifeboat",
}

_GLOBAL_KEYS = {
    "dbs",
    "addr",
    "socket",
    "levels",
    "snapshot",
    "validation",
    "l0-retention",
    "l0-retention-check-interval",
    "retention",
    "verify-compaction",
    "heartbeat-url",
    "heartbeat-interval",
    "exec",
    "logging",
    "mcp-addr",
    "shutdown-sync-timeout",
    "shutdown-sync-interval",
    "paused",
}
_DB_KEYS = {
    "path",
    "dir",
    "pattern",
    "recursive",
    "watch",
    "meta-path",
    "meta-dir",
    "monitor-interval",
    "checkpoint-interval",
    "busy-timeout",
    "min-checkpoint-page-count",
    "truncate-page-n",
    "max-sync-wal-bytes",
    "restore-if-db-not-exists",
    "snapshot",
    "replica",
    "replicas",
}
_LOG_LEVELS = {"trace", "debug", "info", "warn", "warning", "error"}
_YAML11_SHORT_BOOLS = {"y": True, "Y": True, "n": False, "N": False}
_MIN_PART_SIZE = 5 * 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


class _Parser:
    """Walks the loaded YAML, converting and checking every value; errors name file and key path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.secrets: set[str] = set()

    # -- errors and warnings ------------------------------------------------------------------

    def _scrub(self, msg: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            if len(secret) >= 3:
                msg = msg.replace(secret, REDACTED)
        return msg

    def error(self, path: str, msg: str, node: Any = None) -> ConfigError:
        line = getattr(node, "line", None)
        where = f"{path}: " if path else ""
        suffix = f" (line {line})" if line else ""
        return ConfigError(self._scrub(f"{self.source}: {where}{msg}{suffix}"))

    def warn(self, path: str, msg: str) -> None:
        log.warning("%s", self._scrub(f"{self.source}: {path}: {msg}"))

    def collect_secrets(self, node: Any) -> None:
        """Remember every secret value so no message can leak it, even through another key."""
        if isinstance(node, dict):
            for k, v in node.items():
                if str(k) in SECRET_KEYS and isinstance(v, str) and v:
                    self.secrets.add(str(v))
                elif str(k) == "url" and isinstance(v, str):
                    try:
                        pw = urlsplit(v).password
                    except ValueError:
                        pw = None
                    if pw:
                        self.secrets.add(pw)
                self.collect_secrets(v)
        elif isinstance(node, list):
            for item in node:
                self.collect_secrets(item)

    # -- structure ----------------------------------------------------------------------------

    def mapping(self, node: Any, path: str, what: str = "a mapping") -> dict[str, Any]:
        if self.is_null(node):
            return {}
        if not isinstance(node, dict):
            raise self.error(path, f"expected {what}, got {_describe(node)}", node)
        for key in node:
            if not isinstance(key, str) or (isinstance(key, Scalar) and key.value is None):
                raise self.error(path, f"invalid key {str(key)!r}: keys must be names", node)
        return node

    def check_keys(self, node: dict[str, Any], path: str, known: set[str], ignored: Mapping[str, str]) -> None:
        for key in node:
            k = str(key)
            if k in known:
                continue
            if k in ignored:
                self.warn(_join(path, k), f"ignored ({ignored[k]})")
                continue
            msg = f'unknown key "{k}"'
            close = difflib.get_close_matches(k, sorted(known), n=1, cutoff=0.75)
            if close:
                msg += f' (did you mean "{close[0]}"?)'
            raise self.error(path or "(top level)", msg, key)

    def is_null(self, value: Any) -> bool:
        return value is None or (isinstance(value, Scalar) and value.value is None and value.plain)

    # -- scalar conversions -------------------------------------------------------------------

    def _show(self, key: str, value: Any) -> str:
        if key.rsplit(".", 1)[-1] in SECRET_KEYS:
            return "a value (hidden)"
        return repr(str(value)) if isinstance(value, str) else _describe(value)

    def as_str(self, value: Any, path: str) -> str:
        if isinstance(value, Scalar):
            return str(value)  # yaml.v2 puts any scalar's text into a string field
        if isinstance(value, str):
            return value
        if isinstance(value, bool | int | float):
            return str(value)
        raise self.error(path, f"expected a string, got {_describe(value)}", value)

    def as_bool(self, value: Any, path: str) -> bool:
        raw = value.value if isinstance(value, Scalar) else value
        if isinstance(raw, bool):
            return raw
        if isinstance(value, Scalar) and value.plain and str(value) in _YAML11_SHORT_BOOLS:
            return _YAML11_SHORT_BOOLS[str(value)]
        raise self.error(path, f"expected true or false, got {self._show(path, value)}", value)

    def as_int(self, value: Any, path: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
        raw = value.value if isinstance(value, Scalar) else value
        if isinstance(value, Scalar) and not value.plain:
            raw = str(value)
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise self.error(path, f"expected an integer, got {self._show(path, value)}", value)
        if minimum is not None and raw < minimum:
            raise self.error(path, f"must be at least {minimum}, got {raw}", value)
        if maximum is not None and raw > maximum:
            raise self.error(path, f"must be at most {maximum}, got {raw}", value)
        return raw

    def as_duration(
        self,
        value: Any,
        path: str,
        *,
        allow_zero: bool = False,
        minimum: float | None = MIN_INTERVAL,
        maximum: float | None = None,
    ) -> float:
        if isinstance(value, Scalar):
            raw = value.value
            if isinstance(raw, int | float) and not isinstance(raw, bool) and raw != 0:
                # yaml.v2 would read a bare number as nanoseconds: never what anyone meant.
                raise self.error(path, f'invalid duration {str(value)!r}: missing unit (e.g. "{value!s}s")', value)
            text: str | int | float = str(value)
        elif isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.error(path, f'expected a duration such as "1s", got {_describe(value)}', value)
        else:
            text = value
        try:
            seconds = parse_duration(text, allow_zero=allow_zero)
        except ValueError as exc:
            raise self.error(path, str(exc), value) from None
        if seconds == 0:
            return 0.0
        if minimum is not None and seconds < minimum:
            raise self.error(path, f"{_fmt_duration(seconds)} is too short (minimum {_fmt_duration(minimum)})", value)
        if maximum is not None and seconds > maximum:
            raise self.error(path, f"{_fmt_duration(seconds)} is too long (maximum {_fmt_duration(maximum)})", value)
        return seconds

    def as_size(self, value: Any, path: str) -> int:
        raw = value.value if isinstance(value, Scalar) else value
        text: str | int
        if isinstance(raw, int) and not isinstance(raw, bool) and not (isinstance(value, Scalar) and not value.plain):
            text = raw
        elif isinstance(value, str):
            text = str(value)
        else:
            raise self.error(path, f'expected a size such as "64MiB", got {_describe(value)}', value)
        try:
            return parse_size(text)
        except ValueError as exc:
            raise self.error(path, str(exc), value) from None

    def as_strlist(self, value: Any, path: str) -> list[str]:
        if not isinstance(value, list):
            raise self.error(path, f"expected a list of strings, got {_describe(value)}", value)
        out = []
        for i, item in enumerate(value):
            if isinstance(item, dict | list):
                raise self.error(f"{path}[{i}]", f"expected a string, got {_describe(item)}", item)
            out.append(self.as_str(item, f"{path}[{i}]"))
        return out

    def convert(self, kind: str, value: Any, path: str) -> Any:
        if isinstance(value, dict | list) and kind != "strlist":
            raise self.error(path, f"expected a scalar, got {_describe(value)}", value)
        if kind == "str":
            s = self.as_str(value, path)
            if "\x00" in s:
                raise self.error(path, "must not contain a NUL character", value)
            return s
        if kind == "bool":
            return self.as_bool(value, path)
        if kind == "int":
            return self.as_int(value, path)
        if kind == "duration":
            return self.as_duration(value, path, allow_zero=True, minimum=None)
        if kind == "size":
            return self.as_size(value, path)
        if kind == "strlist":
            return self.as_strlist(value, path)
        raise AssertionError(kind)

    # -- replica settings ---------------------------------------------------------------------

    def replica_settings(self, node: Any, path: str, *, top_level: bool) -> dict[str, Any]:
        """Typed settings from a replica block (or the inline defaults at the top level).

        At the top level, keys that are not replica settings are left to the caller's check.
        """
        node = self.mapping(node, path)
        known = (set(_REPLICA_KEYS) - _REPLICA_ONLY if top_level else set(_REPLICA_KEYS)) | {"age"}
        if not top_level:
            self.check_keys(node, path, known, _IGNORED_REPLICA_KEYS)
        out: dict[str, Any] = {}
        for key, value in node.items():
            k = str(key)
            if k not in known or self.is_null(value):
                continue  # ignored/other keys; a null leaves the setting unset (yaml.v2)
            if k == "age":
                self.check_age(value, _join(path, k))
                continue
            out[k] = self.convert(_REPLICA_KEYS[k], value, _join(path, k))
        return out

    def check_age(self, value: Any, path: str) -> None:
        node = self.mapping(value, path)
        self.check_keys(node, path, {"identities", "recipients"}, {})
        if any(not self.is_null(v) and v != [] for v in node.values()):
            raise self.error(
                path,
                "age encryption is not supported (Litestream 0.5 rejects it too; see litestream issue #790)",
                value,
            )
        self.warn(path, "ignored (empty age block)")

    def build_replica(self, node: Any, path: str, defaults: Mapping[str, Any]) -> ReplicaConfig:
        own = self.replica_settings(node, path, top_level=False)
        mapping_node = self.mapping(node, path)

        # Backend.
        url = own.get("url") or None
        kind = own.get("type") or None
        if url is not None:
            scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
            if scheme in _UNSUPPORTED_TYPES:
                raise self.error(_join(path, "url"), _UNSUPPORTED_TYPES[scheme], node)
            try:
                parsed = parse_replica_url(url)
            except ConfigError as exc:
                msg = str(exc).replace(repr(url), repr(_redact_url(url)))
                raise self.error(_join(path, "url"), msg, mapping_node.get("url")) from None
            if kind is not None and kind != parsed.scheme:
                raise self.error(
                    _join(path, "type"),
                    f'type "{kind}" does not match the URL scheme "{parsed.scheme}"',
                    mapping_node.get("type"),
                )
            kind = parsed.scheme
        else:
            parsed = None
            kind = kind or "file"
            if kind in _UNSUPPORTED_TYPES:
                raise self.error(_join(path, "type"), _UNSUPPORTED_TYPES[kind], mapping_node.get("type"))
            if kind not in _SUPPORTED_TYPES:
                raise self.error(
                    _join(path, "type"),
                    f'unknown replica type "{kind}" (expected one of {", ".join(_SUPPORTED_TYPES)})',
                    mapping_node.get("type"),
                )

        applicable = _COMMON_REPLICA | _BACKEND_KEYS[kind]
        for k in own:
            if k not in applicable:
                self.warn(_join(path, k), f"does not apply to a {kind} replica; ignored")

        # Top-level defaults, only for settings this backend uses (Litestream's SetDefaults).
        settings = dict(own)
        inherited: set[str] = set()
        for k, v in defaults.items():
            if k not in settings and (k in applicable):
                settings[k] = v
                inherited.add(k)

        # Lift the generic settings into fields.
        sync_interval = settings.pop("sync-interval", 1.0)
        max_files = settings.pop("max-sync-ltx-files", 256)
        auto_recover = settings.pop("auto-recover", False)

        def src(key: str) -> str:
            return "" if key in inherited else path  # an inherited setting is named by its top-level key

        if sync_interval <= 0:
            raise self.error(
                _join(src("sync-interval"), "sync-interval"),
                "must be greater than 0",
                mapping_node.get("sync-interval"),
            )
        if sync_interval < MIN_INTERVAL or sync_interval > DAY:
            raise self.error(
                _join(src("sync-interval"), "sync-interval"),
                f"{_fmt_duration(sync_interval)} is out of range (1ms to 24h)",
                None,
            )
        if max_files < 1:
            raise self.error(_join(src("max-sync-ltx-files"), "max-sync-ltx-files"), "must be at least 1", None)

        # Per-key range checks.
        if "part-size" in settings and settings["part-size"] < _MIN_PART_SIZE:
            raise self.error(
                _join(src("part-size"), "part-size"), "must be at least 5MiB (the S3 multipart minimum)", None
            )
        if "concurrency" in settings and settings["concurrency"] < 1:
            raise self.error(_join(src("concurrency"), "concurrency"), "must be at least 1", None)
        if "max-reconnects" in settings and settings["max-reconnects"] < -1:
            raise self.error(_join(src("max-reconnects"), "max-reconnects"), "must be -1 (forever) or more", None)
        for k in ("reconnect-wait", "timeout"):
            if k in settings and settings[k] < 0:
                raise self.error(_join(src(k), k), "must not be negative", None)

        # Replica path: not a URL, no NUL, no "..".
        rpath = settings.get("path")
        if rpath:
            if "://" in rpath:
                raise self.error(_join(path, "path"), "a replica path cannot be a URL; use the url: key instead", node)
            if ".." in rpath.replace("\\", "/").split("/"):
                raise self.error(_join(path, "path"), 'must not contain ".." components', mapping_node.get("path"))
        if parsed is not None and ".." in parsed.path.split("/"):
            raise self.error(_join(path, "url"), 'the URL path must not contain ".." components', node)
        if url is not None and "\x00" in url:
            raise self.error(_join(path, "url"), "must not contain a NUL character", node)

        # URL and its components are exclusive (Litestream: "cannot specify url & path").
        if url is not None:
            exclusive = {"path"} | ({"bucket"} if kind in ("s3", "gs", "abs") else set())
            exclusive |= {"host"} if kind == "sftp" else set()
            for k in sorted(exclusive):
                if settings.get(k):
                    raise self.error(
                        _join(src(k), k),
                        f"cannot be combined with url: for a {kind} replica (put it in the URL instead)",
                        mapping_node,
                    )

        # What each backend needs.
        self.check_required(kind, settings, parsed, path, mapping_node)

        if kind == "file" and settings.get("path"):
            settings["path"] = _expand_path(settings["path"])

        return ReplicaConfig(
            settings=settings,
            sync_interval=sync_interval,
            max_sync_ltx_files=max_files,
            auto_recover=auto_recover,
        )

    def check_required(self, kind: str, s: Mapping[str, Any], parsed: Any, path: str, node: Any) -> None:
        if kind == "file":
            if not (parsed.path if parsed is not None else s.get("path")):
                raise self.error(path, "a file replica needs a path (url: file:///abs/path or path:)", node)
        elif kind in ("s3", "gs", "abs"):
            if not (parsed.host if parsed is not None else s.get("bucket")):
                raise self.error(path, f"a {kind} replica needs a bucket (url: {kind}://BUCKET/PATH or bucket:)", node)
        elif kind == "sftp":
            host = parsed.host if parsed is not None else s.get("host")
            user = (parsed.username if parsed is not None else None) or s.get("user")
            if not host:
                raise self.error(path, "an sftp replica needs a host (url: sftp://USER@HOST/PATH or host:)", node)
            if not user:
                raise self.error(path, "an sftp replica needs a user (url: sftp://USER@HOST/PATH or user:)", node)
        elif kind == "nats":
            bucket = (parsed.path.strip("/") if parsed is not None else "") or s.get("bucket")
            if not bucket:
                raise self.error(path, "a nats replica needs a bucket (url: nats://HOST/BUCKET or bucket:)", node)
            if bool(s.get("client-cert")) != bool(s.get("client-key")):
                raise self.error(path, "client-cert and client-key must be given together", node)

    # -- snapshot block -----------------------------------------------------------------------

    def snapshot(self, node: Any, path: str) -> dict[str, float]:
        snap = self.mapping(node, path)
        self.check_keys(snap, path, {"interval", "retention"}, {})
        out: dict[str, float] = {}
        for k in ("interval", "retention"):
            if k in snap and not self.is_null(snap[k]):
                out[k] = self.as_duration(snap[k], _join(path, k))
        return out

    # -- database -----------------------------------------------------------------------------

    def database(self, node: Any, path: str, defaults: Mapping[str, Any]) -> tuple[DBConfig, dict[str, float]]:
        db = self.mapping(node, path, "a database mapping (path:, replica:)")
        self.check_keys(db, path, _DB_KEYS, _IGNORED_DB_KEYS)
        get = {str(k): v for k, v in db.items() if not self.is_null(v)}

        has_path, has_dir = "path" in get, "dir" in get
        if has_path and has_dir:
            raise self.error(path, "cannot specify both path: and dir:", db)
        recursive = "recursive" in get and self.as_bool(get["recursive"], _join(path, "recursive"))
        if has_dir or "pattern" in get or "meta-dir" in get or recursive:
            raise self.error(
                _join(path, "dir") if has_dir else path, "directory replication (dir:) is not supported", db
            )
        if "watch" in get and self.as_bool(get["watch"], _join(path, "watch")):
            raise self.error(_join(path, "watch"), "watch: can only be enabled with dir:", get["watch"])
        if not has_path:
            raise self.error(path, "a database needs a path:", db)
        raw_path = self.convert("str", get["path"], _join(path, "path"))
        if not raw_path.strip():
            raise self.error(_join(path, "path"), "must not be empty", get["path"])
        dbc = DBConfig(path=_expand_path(raw_path))

        if "meta-path" in get:
            meta = self.convert("str", get["meta-path"], _join(path, "meta-path"))
            dbc.meta_path = _expand_path(meta) if meta else None
        if "monitor-interval" in get:
            dbc.monitor_interval = self.as_duration(
                get["monitor-interval"], _join(path, "monitor-interval"), maximum=DAY
            )
        if "checkpoint-interval" in get:
            dbc.checkpoint_interval = self.as_duration(
                get["checkpoint-interval"], _join(path, "checkpoint-interval"), allow_zero=True
            )
        if "busy-timeout" in get:
            dbc.busy_timeout = self.as_duration(
                get["busy-timeout"], _join(path, "busy-timeout"), allow_zero=True, minimum=None, maximum=HOUR
            )
        if "min-checkpoint-page-count" in get:
            dbc.min_checkpoint_page_count = self.as_int(
                get["min-checkpoint-page-count"], _join(path, "min-checkpoint-page-count"), minimum=1
            )
        if "truncate-page-n" in get:
            n = self.as_int(get["truncate-page-n"], _join(path, "truncate-page-n"), minimum=0)
            dbc.truncate_page_n = n or DEFAULT_TRUNCATE_PAGE_N
        if "max-sync-wal-bytes" in get:
            size = self.as_size(get["max-sync-wal-bytes"], _join(path, "max-sync-wal-bytes"))
            if size < 1:
                raise self.error(_join(path, "max-sync-wal-bytes"), "must be greater than 0", get["max-sync-wal-bytes"])
            dbc.max_sync_wal_bytes = size
        if "restore-if-db-not-exists" in get:
            dbc.restore_if_db_not_exists = self.as_bool(
                get["restore-if-db-not-exists"], _join(path, "restore-if-db-not-exists")
            )
        snap = self.snapshot(get["snapshot"], _join(path, "snapshot")) if "snapshot" in get else {}

        has_replica, has_list = "replica" in get, "replicas" in get
        if has_replica and has_list:
            raise self.error(path, "cannot specify both replica: and replicas:", db)
        if has_list:
            lst = get["replicas"]
            if not isinstance(lst, list):
                raise self.error(_join(path, "replicas"), f"expected a list, got {_describe(lst)}", lst)
            if len(lst) > 1:
                raise self.error(
                    _join(path, "replicas"),
                    "multiple replicas on a single database are not supported (nor by Litestream 0.5)",
                    lst,
                )
            if lst:
                self.warn(_join(path, "replicas"), "deprecated: use replica: (a single mapping) instead")
                dbc.replica = self.build_replica(lst[0], f"{_join(path, 'replicas')}[0]", defaults)
        elif has_replica:
            dbc.replica = self.build_replica(get["replica"], _join(path, "replica"), defaults)
        if dbc.replica is None:
            raise self.error(path, "no replica configured (replica: with a url:)", db)
        return dbc, snap

    # -- whole file ---------------------------------------------------------------------------

    def config(self, root: Any) -> Config:
        if self.is_null(root):
            root = {}
        top = self.mapping(root, "", "a mapping at the top level (dbs:, ...)")
        self.collect_secrets(top)
        known = _GLOBAL_KEYS | (set(_REPLICA_KEYS) - _REPLICA_ONLY) | {"age"}
        for k in top:
            if str(k) in _REPLICA_ONLY:
                raise self.error(
                    "(top level)",
                    f'"{k}" belongs in a database (dbs: - path: ...) or its replica: block, not here',
                    k,
                )
        self.check_keys(top, "", known, _IGNORED_GLOBAL_KEYS)
        get = {str(k): v for k, v in top.items() if not self.is_null(v)}
        cfg = Config(source=self.source)

        if "addr" in get:
            cfg.addr = self.convert("str", get["addr"], "addr") or None
        if "mcp-addr" in get:
            cfg.mcp_addr = self.convert("str", get["mcp-addr"], "mcp-addr") or None
            if cfg.mcp_addr:
                self.warn("mcp-addr", "the MCP server is not supported by lifeboat; ignored")
        if "exec" in get:
            cfg.exec = self.convert("str", get["exec"], "exec") or None
        if "verify-compaction" in get:
            cfg.verify_compaction = self.as_bool(get["verify-compaction"], "verify-compaction")
        if "paused" in get:
            cfg.paused = self.as_bool(get["paused"], "paused")

        if "socket" in get:
            sock = self.mapping(get["socket"], "socket")
            self.check_keys(sock, "socket", {"enabled", "path", "permissions"}, {})
            if not self.is_null(sock.get("enabled")):
                cfg.socket_enabled = self.as_bool(sock["enabled"], "socket.enabled")
            if not self.is_null(sock.get("path")):
                cfg.socket_path = self.convert("str", sock["path"], "socket.path") or DEFAULT_SOCKET_PATH
            if not self.is_null(sock.get("permissions")):
                perm = sock["permissions"]
                if isinstance(perm, Scalar) and not perm.plain and re.fullmatch(r"0?[0-7]{1,4}", str(perm)):
                    cfg.socket_permissions = int(str(perm), 8)
                else:
                    cfg.socket_permissions = self.as_int(perm, "socket.permissions", minimum=0, maximum=0o7777)

        if "levels" in get:
            levels = get["levels"]
            if not isinstance(levels, list):
                raise self.error("levels", f"expected a list of {{interval: ...}}, got {_describe(levels)}", levels)
            if len(levels) > MAX_LEVELS:
                raise self.error("levels", f"at most {MAX_LEVELS} levels (L1..L8; L9 is the snapshot level)", levels)
            cfg.levels = []
            for i, lvl in enumerate(levels):
                lp = f"levels[{i}]"
                m = self.mapping(lvl, lp, "a mapping {interval: ...}")
                self.check_keys(m, lp, {"interval"}, {})
                if self.is_null(m.get("interval")):
                    raise self.error(lp, "interval: is required", lvl)
                cfg.levels.append(self.as_duration(m["interval"], f"{lp}.interval"))

        if "snapshot" in get:
            snap = self.snapshot(get["snapshot"], "snapshot")
            cfg.snapshot_interval = snap.get("interval", cfg.snapshot_interval)
            cfg.snapshot_retention = snap.get("retention", cfg.snapshot_retention)
        if "validation" in get:
            val = self.mapping(get["validation"], "validation")
            self.check_keys(val, "validation", {"interval"}, {})
            if not self.is_null(val.get("interval")):
                cfg.validation_interval = self.as_duration(val["interval"], "validation.interval")
        if "retention" in get:
            ret = self.mapping(get["retention"], "retention", "a mapping {enabled: true|false}")
            self.check_keys(ret, "retention", {"enabled"}, {})
            if not self.is_null(ret.get("enabled")):
                cfg.retention_enabled = self.as_bool(ret["enabled"], "retention.enabled")
        if "l0-retention" in get:
            cfg.l0_retention = self.as_duration(get["l0-retention"], "l0-retention", allow_zero=True)
        if "l0-retention-check-interval" in get:
            cfg.l0_retention_check_interval = self.as_duration(
                get["l0-retention-check-interval"], "l0-retention-check-interval"
            )
        if "shutdown-sync-timeout" in get:
            cfg.shutdown_sync_timeout = self.as_duration(
                get["shutdown-sync-timeout"], "shutdown-sync-timeout", allow_zero=True, minimum=None
            )
        if "shutdown-sync-interval" in get:
            cfg.shutdown_sync_interval = self.as_duration(get["shutdown-sync-interval"], "shutdown-sync-interval")
        if "heartbeat-url" in get:
            url = self.convert("str", get["heartbeat-url"], "heartbeat-url")
            if url and not url.startswith(("http://", "https://")):
                raise self.error("heartbeat-url", "must be an http:// or https:// URL", get["heartbeat-url"])
            cfg.heartbeat_url = url or None
        if "heartbeat-interval" in get:
            cfg.heartbeat_interval = self.as_duration(get["heartbeat-interval"], "heartbeat-interval", minimum=MINUTE)

        if "logging" in get:
            lg = self.mapping(get["logging"], "logging")
            self.check_keys(lg, "logging", {"level", "type", "stderr", "source"}, {})
            if not self.is_null(lg.get("level")):
                level = self.convert("str", lg["level"], "logging.level").lower()
                if level and level not in _LOG_LEVELS:
                    raise self.error(
                        "logging.level",
                        f'unknown level "{level}" (expected {", ".join(sorted(_LOG_LEVELS))})',
                        lg,
                    )
                cfg.logging_level = _norm_level(level or "info")
            if not self.is_null(lg.get("type")):
                typ = self.convert("str", lg["type"], "logging.type") or "text"
                if typ not in ("text", "json"):
                    raise self.error("logging.type", f'unknown type "{typ}" (expected text or json)', lg)
                cfg.logging_type = typ
            if not self.is_null(lg.get("stderr")):
                cfg.logging_stderr = self.as_bool(lg["stderr"], "logging.stderr")
            if not self.is_null(lg.get("source")):
                cfg.logging_source = self.as_bool(lg["source"], "logging.source")
        env_level = os.environ.get("LOG_LEVEL", "").strip().lower()
        if env_level:
            if env_level in _LOG_LEVELS:
                cfg.logging_level = _norm_level(env_level)
            else:
                log.warning("LOG_LEVEL=%r is not a log level; keeping %s", env_level, cfg.logging_level)

        # Inline replica defaults.
        defaults = self.replica_settings(top, "", top_level=True)

        # Databases.
        dbs = get.get("dbs")
        if dbs is None or dbs == []:
            raise self.error("dbs" if "dbs" in top else "", "no databases configured", dbs)
        if not isinstance(dbs, list):
            raise self.error("dbs", f"expected a list of databases, got {_describe(dbs)}", dbs)
        snaps: list[tuple[str, dict[str, float]]] = []
        seen_paths: dict[str, str] = {}
        seen_meta: dict[str, str] = {}
        for i, node in enumerate(dbs):
            dp = f"dbs[{i}]"
            dbc, snap = self.database(node, dp, defaults)
            if dbc.path in seen_paths:
                raise self.error(f"{dp}.path", f"{dbc.path} is already configured in {seen_paths[dbc.path]}", node)
            seen_paths[dbc.path] = dp
            meta = dbc.meta_dir()
            if meta in seen_meta:
                raise self.error(f"{dp}.meta-path", f"{meta} is already used by {seen_meta[meta]}", node)
            seen_meta[meta] = dp
            if snap:
                snaps.append((f"{dp}.snapshot", snap))
            cfg.dbs.append(dbc)

        # Per-database snapshot settings: Litestream promotes them to the global setting, so they
        # must agree with each other and with an explicit global snapshot block.
        if snaps:
            first_path, first = snaps[0]
            for p, s in snaps[1:]:
                if s != first:
                    raise self.error(p, f"must be identical in every database (differs from {first_path})")
            if "snapshot" in get:
                glob = {"interval": cfg.snapshot_interval, "retention": cfg.snapshot_retention}
                if any(glob[k] != v for k, v in first.items()):
                    raise self.error(first_path, "differs from the top-level snapshot: block")
            cfg.snapshot_interval = first.get("interval", cfg.snapshot_interval)
            cfg.snapshot_retention = first.get("retention", cfg.snapshot_retention)
        return cfg


def _norm_level(level: str) -> str:
    return "warn" if level == "warning" else level


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    if isinstance(value, Scalar):
        v = value.value
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "a boolean"
        if isinstance(v, int | float):
            return f"the number {value}"
        return f"the string {str(value)!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return type(value).__name__


def _fmt_duration(seconds: float) -> str:
    if seconds >= HOUR and seconds % HOUR == 0:
        return f"{seconds / HOUR:g}h"
    if seconds >= MINUTE and seconds % MINUTE == 0:
        return f"{seconds / MINUTE:g}m"
    if seconds >= 1:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"


def _expand_path(path: str) -> str:
    """Litestream's `expand`: strip `sqlite://`/`sqlite3://`, expand `~` and `~/`, make absolute."""
    for prefix in ("sqlite3://", "sqlite://"):
        if path.startswith(prefix):
            path = path[len(prefix) :]
            break
    if path == "~" or path.startswith("~/"):
        path = os.path.expanduser(path)
    return os.path.abspath(path)


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def parse_config(text: str, source: str, *, expand: bool = True) -> Config:
    """Parse a Litestream-style YAML config. `source` names the file in error messages.

    With `expand`, `$VAR`/`${VAR}`/`$PID` are expanded in the whole text before YAML parsing, as
    Litestream does (disable with `-no-expand-env`). Raises `ConfigError`.
    """
    if expand:
        text = expand_env(text)
    return _Parser(source).config(load_yaml(text, source))


def load_config(path: str, *, expand: bool = True) -> Config:
    """Read and parse the config file at `path` (`~` expanded). Raises `ConfigError`."""
    full = _expand_path(path)
    try:
        with open(full, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    return parse_config(text, path, expand=expand)


def config_for_db(path: str, url: str, **replica_opts: Any) -> Config:
    """The config of `lifeboat replicate DB URL`: one database, one replica, defaults elsewhere.

    `replica_opts` are replica settings by Litestream's names, with `_` for `-`
    (e.g. `sync_interval="500ms"` or `sync_interval=0.5`, `region="eu-west-1"`); they are
    validated like the YAML. Raises `ConfigError` (source `<args>`).
    """
    replica: dict[str, Any] = {"url": url}
    for k, v in replica_opts.items():
        if v is not None:
            replica[k.replace("_", "-")] = v
    parser = _Parser("<args>")
    return parser.config({"dbs": [{"path": path, "replica": replica}]})
