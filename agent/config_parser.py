"""Validation of the loaded YAML into a `Config`: every value converted and checked.

Errors are `ConfigError`s naming the file, the key path and the line, with every secret value
scrubbed out; keys that Litestream accepts but no longer uses only log a warning on the
`lifeboat.config` logger.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .config_keys import (
    BACKEND_KEYS,
    COMMON_REPLICA,
    DB_KEYS,
    GLOBAL_KEYS,
    IGNORED_DB_KEYS,
    IGNORED_GLOBAL_KEYS,
    IGNORED_REPLICA_KEYS,
    IGNORED_REPLICA_SETTINGS,
    LOG_LEVELS,
    LTX_PAGE_ENCODINGS,
    MAX_LEVELS,
    MIN_INTERVAL,
    MIN_PART_SIZE,
    REPLICA_KEYS,
    REPLICA_ONLY,
    SUBKEYS,
    SUPPORTED_TYPES,
    UNSUPPORTED_REPLICA_FLAGS,
    UNSUPPORTED_TYPES,
    YAML11_SHORT_BOOLS,
)
from .config_model import DEFAULT_SOCKET_PATH, DEFAULT_TRUNCATE_PAGE_N, Config, DBConfig, ReplicaConfig
from .config_secrets import REDACTED, SECRET_KEYS, redact_url
from .config_values import DAY, HOUR, MINUTE, expand_path, parse_duration, parse_size
from .config_yaml import Scalar
from .storage import ConfigError, parse_replica_url

log = logging.getLogger("lifeboat.config")


class _Parser:
    """Walks the loaded YAML, converting and checking every value; errors name file and key path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.secrets: set[str] = set()
        self.applicable: set[str] = set()  # replica keys that apply to some configured replica

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
        if isinstance(value, Scalar) and value.plain and str(value) in YAML11_SHORT_BOOLS:
            return YAML11_SHORT_BOOLS[str(value)]
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
        known = (set(REPLICA_KEYS) - REPLICA_ONLY if top_level else set(REPLICA_KEYS)) | {"age"}
        if not top_level:
            self.check_keys(node, path, known, IGNORED_REPLICA_KEYS)
        out: dict[str, Any] = {}
        for key, value in node.items():
            k = str(key)
            if k not in known or self.is_null(value):
                continue  # ignored/other keys; a null leaves the setting unset (yaml.v2)
            if k == "age":
                self.check_age(value, _join(path, k))
                continue
            out[k] = self.convert(REPLICA_KEYS[k], value, _join(path, k))
        return out

    def check_age(self, value: Any, path: str) -> None:
        node = self.mapping(value, path)
        self.check_keys(node, path, SUBKEYS["age"], {})
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
            if scheme in UNSUPPORTED_TYPES:
                raise self.error(_join(path, "url"), UNSUPPORTED_TYPES[scheme], node)
            try:
                parsed = parse_replica_url(url)
            except ConfigError as exc:
                msg = str(exc).replace(repr(url), repr(redact_url(url)))
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
            if kind in UNSUPPORTED_TYPES:
                raise self.error(_join(path, "type"), UNSUPPORTED_TYPES[kind], mapping_node.get("type"))
            if kind not in SUPPORTED_TYPES:
                raise self.error(
                    _join(path, "type"),
                    f'unknown replica type "{kind}" (expected one of {", ".join(SUPPORTED_TYPES)})',
                    mapping_node.get("type"),
                )

        applicable = COMMON_REPLICA | BACKEND_KEYS[kind]
        self.applicable |= applicable
        for k in own:
            if k not in applicable:
                self.warn(_join(path, k), f"does not apply to a {kind} replica; ignored")
        self.check_unsupported(own, path, mapping_node)

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
        if "part-size" in settings and settings["part-size"] < MIN_PART_SIZE:
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
            exclusive |= {"bucket"} if kind == "nats" and parsed is not None and parsed.path.strip("/") else set()
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
            settings["path"] = expand_path(settings["path"])

        return ReplicaConfig(
            settings=settings,
            sync_interval=sync_interval,
            max_sync_ltx_files=max_files,
            auto_recover=auto_recover,
        )

    def check_unsupported(self, settings: Mapping[str, Any], path: str, node: Any) -> None:
        """Replica settings whose Litestream behaviour Lifeboat does not have: a warning, or an error
        when the setting asks for that behaviour."""
        for k, why in IGNORED_REPLICA_SETTINGS.items():
            if k in settings:
                self.warn(_join(path, k), f"ignored ({why})")
        for k, why in UNSUPPORTED_REPLICA_FLAGS.items():
            if settings.get(k):
                raise self.error(_join(path, k), why, node.get(k) if isinstance(node, dict) else None)

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
        self.check_keys(snap, path, SUBKEYS["snapshot"], {})
        out: dict[str, float] = {}
        for k in ("interval", "retention"):
            if k in snap and not self.is_null(snap[k]):
                out[k] = self.as_duration(snap[k], _join(path, k))
        return out

    # -- database -----------------------------------------------------------------------------

    def database(self, node: Any, path: str, defaults: Mapping[str, Any]) -> tuple[DBConfig, dict[str, float]]:
        db = self.mapping(node, path, "a database mapping (path:, replica:)")
        self.check_keys(db, path, DB_KEYS, IGNORED_DB_KEYS)
        get = {str(k): v for k, v in db.items() if not self.is_null(v)}

        has_path, has_dir = "path" in get, "dir" in get
        if has_path and has_dir:
            raise self.error(path, "cannot specify both path: and dir:", db)
        if not has_dir:
            for key in ("pattern", "meta-dir"):
                if key in get:
                    raise self.error(_join(path, key), f"{key}: can only be used with dir:", get[key])
            for key in ("recursive", "watch"):
                if key in get and self.as_bool(get[key], _join(path, key)):
                    raise self.error(_join(path, key), f"{key}: can only be enabled with dir:", get[key])
        if not (has_path or has_dir):
            raise self.error(path, "a database needs a path: (or dir: and pattern:)", db)
        key = "dir" if has_dir else "path"
        raw_path = self.convert("str", get[key], _join(path, key))
        if not raw_path.strip():
            raise self.error(_join(path, key), "must not be empty", get[key])
        dbc = DBConfig(path=expand_path(raw_path))
        if has_dir:
            self.directory(dbc, get, path)

        if "meta-path" in get:
            meta = self.convert("str", get["meta-path"], _join(path, "meta-path"))
            dbc.meta_path = expand_path(meta) if meta else None
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

    def directory(self, dbc: DBConfig, get: Mapping[str, Any], path: str) -> None:
        """`dir:` with `pattern:` (required, as in Litestream), `recursive:`, `watch:`, `meta-dir:`."""
        if "pattern" not in get:
            raise self.error(_join(path, "pattern"), "pattern: is required with dir: (e.g. pattern: '*.db')", None)
        pattern = self.convert("str", get["pattern"], _join(path, "pattern"))
        if not pattern or "/" in pattern:
            raise self.error(_join(path, "pattern"), "must be a file name pattern such as '*.db'", get["pattern"])
        dbc.pattern = pattern
        if "recursive" in get:
            dbc.recursive = self.as_bool(get["recursive"], _join(path, "recursive"))
        if "watch" in get:
            dbc.watch = self.as_bool(get["watch"], _join(path, "watch"))
        if "meta-dir" in get:
            if "meta-path" in get:
                raise self.error(
                    _join(path, "meta-dir"), "cannot specify both meta-path: and meta-dir:", get["meta-dir"]
                )
            meta_dir = self.convert("str", get["meta-dir"], _join(path, "meta-dir"))
            dbc.meta_dir_root = expand_path(meta_dir) if meta_dir else None

    # -- whole file ---------------------------------------------------------------------------

    def config(self, root: Any) -> Config:
        if self.is_null(root):
            root = {}
        top = self.mapping(root, "", "a mapping at the top level (dbs:, ...)")
        self.collect_secrets(top)
        known = GLOBAL_KEYS | (set(REPLICA_KEYS) - REPLICA_ONLY) | {"age"}
        for k in top:
            if str(k) in REPLICA_ONLY:
                raise self.error(
                    "(top level)",
                    f'"{k}" belongs in a database (dbs: - path: ...) or its replica: block, not here',
                    k,
                )
        self.check_keys(top, "", known, IGNORED_GLOBAL_KEYS)
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
        if "ltx-page-encoding" in get:
            encoding = self.convert("str", get["ltx-page-encoding"], "ltx-page-encoding")
            if encoding not in LTX_PAGE_ENCODINGS:
                raise self.error(
                    "ltx-page-encoding",
                    f'unknown encoding "{encoding}" (expected one of {", ".join(LTX_PAGE_ENCODINGS)})',
                    get["ltx-page-encoding"],
                )
            cfg.ltx_page_encoding = encoding

        if "socket" in get:
            sock = self.mapping(get["socket"], "socket")
            self.check_keys(sock, "socket", SUBKEYS["socket"], {})
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
                self.check_keys(m, lp, SUBKEYS["levels"], {})
                if self.is_null(m.get("interval")):
                    raise self.error(lp, "interval: is required", lvl)
                cfg.levels.append(self.as_duration(m["interval"], f"{lp}.interval"))

        if "snapshot" in get:
            snap = self.snapshot(get["snapshot"], "snapshot")
            cfg.snapshot_interval = snap.get("interval", cfg.snapshot_interval)
            cfg.snapshot_retention = snap.get("retention", cfg.snapshot_retention)
        if "validation" in get:
            val = self.mapping(get["validation"], "validation")
            self.check_keys(val, "validation", SUBKEYS["validation"], {})
            if not self.is_null(val.get("interval")):
                cfg.validation_interval = self.as_duration(val["interval"], "validation.interval")
        if "retention" in get:
            ret = self.mapping(get["retention"], "retention", "a mapping {enabled: true|false}")
            self.check_keys(ret, "retention", SUBKEYS["retention"], {})
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
            self.check_keys(lg, "logging", SUBKEYS["logging"], {})
            if not self.is_null(lg.get("level")):
                level = self.convert("str", lg["level"], "logging.level").lower()
                if level and level not in LOG_LEVELS:
                    raise self.error(
                        "logging.level",
                        f'unknown level "{level}" (expected {", ".join(sorted(LOG_LEVELS))})',
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
            if env_level in LOG_LEVELS:
                cfg.logging_level = _norm_level(env_level)
            else:
                log.warning("LOG_LEVEL=%r is not a log level; keeping %s", env_level, cfg.logging_level)

        # Inline replica defaults.
        defaults = self.replica_settings(top, "", top_level=True)
        self.check_unsupported(defaults, "", top)

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
            if dbc.pattern is not None:
                cfg.directories.append(dbc)
                if snap:
                    snaps.append((f"{dp}.snapshot", snap))
                continue
            meta = dbc.meta_dir()
            if meta in seen_meta:
                raise self.error(f"{dp}.meta-path", f"{meta} is already used by {seen_meta[meta]}", node)
            seen_meta[meta] = dp
            if snap:
                snaps.append((f"{dp}.snapshot", snap))
            cfg.dbs.append(dbc)

        for k in sorted(set(defaults) - self.applicable):
            self.warn(k, "does not apply to any configured replica; ignored")

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


def build_config(root: Any, source: str) -> Config:
    """The `Config` described by `root`, a tree from `load_yaml` or of plain Python values.

    `source` names the file in error messages. Raises `ConfigError`.
    """
    return _Parser(source).config(root)
