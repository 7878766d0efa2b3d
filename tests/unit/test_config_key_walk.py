"""Every key of the config schema (agent/config_keys.py) is accounted for: it changes behaviour, or it
is rejected by name, or it is warned about by name. None is accepted and silently ignored.

"Changes behaviour" is proved in two steps: setting the key changes the parsed model (a field of
`Config`, `DBConfig` or `ReplicaConfig`, or the replica's settings), and the code outside the config
modules reads that field (or, for a replica setting, the backend module reads the key). Behavioural
tests of the keys live beside their features (tests/e2e/test_validation.py,
tests/storage/test_backend_options.py, ...).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from lifeboat.agent import config_keys as K
from lifeboat.agent.config_model import Config, DBConfig, ReplicaConfig
from lifeboat.agent.config_parser import build_config
from lifeboat.agent.storage import ConfigError, new_client

AGENT = Path(__file__).resolve().parents[2] / "agent"
# Implemented on other branches; flip each to a proof below when it lands.
IMPLEMENTED_ELSEWHERE = {"socket", "socket.enabled", "socket.path", "socket.permissions", "dir", "pattern",
                         "recursive", "watch", "meta-dir"}

# A base replica per backend in component form (no URL), so that every key can be set on it.
BASE_REPLICA: dict[str, dict[str, Any]] = {
    "file": {"type": "file", "path": "/backup/app"},
    "s3": {"type": "s3", "bucket": "bkt", "path": "app"},
    "gs": {"type": "gs", "bucket": "bkt", "path": "app"},
    "abs": {"type": "abs", "bucket": "ctr", "account-name": "acct", "path": "app"},
    "sftp": {"type": "sftp", "host": "sftp.example", "user": "u", "path": "/backup/app"},
    "nats": {"url": "nats://127.0.0.1:4222", "bucket": "bkt"},
}

# Global and per-database keys: a value that is not the default.
GLOBAL_VALUES: dict[str, Any] = {
    "addr": ":9999",
    "levels": [{"interval": "10s"}],
    "levels.interval": [{"interval": "10s"}],
    "snapshot": {"interval": "1h"},
    "snapshot.interval": {"interval": "1h"},
    "snapshot.retention": {"retention": "2h"},
    "validation": {"interval": "1m"},
    "validation.interval": {"interval": "1m"},
    "l0-retention": "1m",
    "l0-retention-check-interval": "1m",
    "retention": {"enabled": False},
    "retention.enabled": {"enabled": False},
    "verify-compaction": True,
    "heartbeat-url": "http://127.0.0.1:9/beat",
    "heartbeat-interval": "2m",
    "exec": "sleep 1",
    "logging": {"level": "debug"},
    "logging.level": {"level": "debug"},
    "logging.type": {"type": "json"},
    "logging.stderr": {"stderr": False},
    "logging.source": {"source": True},
    "shutdown-sync-timeout": "5s",
    "shutdown-sync-interval": "2s",
    "paused": True,
    "ltx-page-encoding": "block",
}
DB_VALUES: dict[str, Any] = {
    "path": "/data/other.db",
    "meta-path": "/meta/app",
    "monitor-interval": "5s",
    "checkpoint-interval": "5m",
    "busy-timeout": "5s",
    "min-checkpoint-page-count": 50,
    "truncate-page-n": 500,
    "max-sync-wal-bytes": "1MiB",
    "restore-if-db-not-exists": True,
    "snapshot": {"interval": "1h"},
    "replica": {"type": "file", "path": "/backup/other"},
    "replicas": [{"type": "file", "path": "/backup/other"}],
}
REPLICA_VALUES: dict[str, Any] = {
    "type": "s3",  # with bucket: from the s3 base
    "bool": True,
    "int": 7,
    "duration": "7s",
    "size": "7MiB",
    "strlist": ["/ca.pem"],
    "str": "custom-value",
}
# Warned (W) or rejected (R) by name, with the fragment that triggers it.
WARNED_OR_REJECTED: dict[str, tuple[str, str, dict[str, Any]]] = {
    "mcp-addr": ("W", "global", {"mcp-addr": ":3001"}),
    "validation-interval": ("W", "global", {"validation-interval": "1m"}),
    "max-checkpoint-page-count": ("W", "db", {"max-checkpoint-page-count": 10}),
    "replica.name": ("W", "replica", {"name": "r"}),
    "replica.validation-interval": ("W", "replica", {"validation-interval": "1m"}),
    "replica.snapshot-interval": ("W", "replica", {"snapshot-interval": "1h"}),
    "replica.retention": ("W", "replica", {"retention": "1h"}),
    "replica.retention-check-interval": ("W", "replica", {"retention-check-interval": "1h"}),
    "replica.max-sync-ltx-files": ("W", "replica", {"max-sync-ltx-files": 10}),
    "replica.auto-recover": ("R", "replica", {"auto-recover": True}),
    "replica.age": ("R", "replica", {"age": {"recipients": ["age1xyz"]}}),
    "replica.age.identities": ("R", "replica", {"age": {"identities": ["/key.txt"]}}),
    "replica.age.recipients": ("R", "replica", {"age": {"recipients": ["age1xyz"]}}),
    "replica.webdav-url": ("W", "replica", {"webdav-url": "https://dav.example/"}),
    "replica.webdav-username": ("W", "replica", {"webdav-username": "u"}),
    "replica.webdav-password": ("W", "replica", {"webdav-password": "p"}),
    # A NATS replica rejects these when it is built (nats-py has no JWT/seed pair login).
    "replica.jwt": ("R", "nats", {"jwt": "eyJ"}),
    "replica.seed": ("R", "nats", {"seed": "SUA"}),
    "replica.path (nats)": ("R", "nats", {"path": "app"}),  # a NATS object store has no path
    "replica.bucket (nats URL with a bucket)": ("R", "nats-url", {"bucket": "other"}),
}
# Keys that are only valid together.
PAIRED = {"client-cert": "client-key", "client-key": "client-cert"}
# NATS TLS files are opened when the client is built: proved by the backend reading the key.
READ_BY_BACKEND_ONLY = {"root-cas", "client-cert", "client-key"}


def _schema() -> set[str]:
    """Every key path of the schema: global, global blocks' keys, database keys, replica keys."""
    keys = set(K.GLOBAL_KEYS) - {"dbs"}
    keys |= {f"{block}.{k}" for block, sub in K.SUBKEYS.items() if block != "age" for k in sub}
    keys |= set(K.DB_KEYS) | set(K.IGNORED_DB_KEYS) | set(K.IGNORED_GLOBAL_KEYS)
    keys |= {f"replica.{k}" for k in (*K.REPLICA_KEYS, *K.IGNORED_REPLICA_KEYS, "age")}
    keys |= {f"replica.age.{k}" for k in K.SUBKEYS["age"]}
    return keys


def _config(top: dict[str, Any] | None = None, db: dict[str, Any] | None = None,
            replica: dict[str, Any] | None = None) -> Config:
    entry: dict[str, Any] = {"path": "/data/app.db", "replica": replica or dict(BASE_REPLICA["file"])}
    entry.update(db or {})
    if "replicas" in entry:
        del entry["replica"]
    return build_config({**(top or {}), "dbs": [entry]}, "walk.yml")


def _fields(obj: Any, prefix: str = "") -> dict[str, Any]:
    """The model as flat field -> value, settings keys as `settings[key]`."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for item in value:
                out.update(_fields(item, prefix))
        elif dataclasses.is_dataclass(value):
            out.update(_fields(value, prefix))
        elif f.name == "settings":
            out.update({f"settings[{k}]": v for k, v in value.items()})
        elif f.name != "source":
            out[f.name] = value
    return out


def _changed(a: Config, b: Config) -> set[str]:
    fa, fb = _fields(a), _fields(b)
    return {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


_SOURCES: dict[str, str] = {}


def _source(*globs: str) -> str:
    key = ",".join(globs)
    if key not in _SOURCES:
        files = sorted({p for g in globs for p in AGENT.glob(g)} - set(AGENT.glob("config*.py")))
        _SOURCES[key] = "\n".join(p.read_text() for p in files)
    return _SOURCES[key]


def _field_is_read(name: str) -> bool:
    """The model field is read (not just assigned) by the agent outside the config modules."""
    return re.search(rf"\.{re.escape(name)}\b(?!\s*=[^=])", _source("*.py", "storage/*.py")) is not None


def _setting_is_read(key: str, backend: str) -> bool:
    """The backend module (or the generic agent code) reads the replica setting `key`."""
    module = {"gs": "gcs"}.get(backend, backend)
    text = _source(f"storage/{module}.py", "storage/__init__.py", "storage/blob.py")
    return re.search(rf"""(get\(|\[)\s*"{re.escape(key)}"|"{re.escape(key)}" in """, text) is not None


def test_every_key_has_a_proof() -> None:
    """The walk below covers the whole schema: a new key fails here until it gets a proof."""
    proved = set(GLOBAL_VALUES) | set(DB_VALUES) | set(WARNED_OR_REJECTED) | IMPLEMENTED_ELSEWHERE
    proved = {k.split(" ")[0] for k in proved}
    proved |= {f"replica.{k}" for k in K.REPLICA_KEYS}  # walked per backend below
    assert _schema() - proved == set()


@pytest.mark.parametrize("key", sorted(GLOBAL_VALUES))
def test_global_key_changes_the_model_and_is_read(key: str) -> None:
    top = key.split(".")[0]
    changed = _changed(_config(), _config(top={top: GLOBAL_VALUES[key]}))
    assert changed, f"{key}: no field of the model changed"
    unread = {f for f in changed if not _field_is_read(f)}
    assert not unread, f"{key}: {sorted(unread)} never read outside the config modules"


@pytest.mark.parametrize("key", sorted(DB_VALUES))
def test_db_key_changes_the_model_and_is_read(key: str) -> None:
    changed = _changed(_config(), _config(db={key: copy.deepcopy(DB_VALUES[key])}))
    assert changed, f"{key}: no field of the model changed"
    unread = {f for f in changed if not f.startswith("settings[") and not _field_is_read(f)}
    assert not unread, f"{key}: {sorted(unread)} never read outside the config modules"


def _replica_cases() -> list[tuple[str, str]]:
    return sorted(
        (backend, key)
        for backend, keys in K.BACKEND_KEYS.items()
        for key in (keys | K.COMMON_REPLICA) - {"age", "url"} - set(K.IGNORED_REPLICA_SETTINGS)
        - set(K.UNSUPPORTED_REPLICA_FLAGS) - {k.split(".")[1] for k in WARNED_OR_REJECTED if k.startswith("replica.")}
        if (backend, key) != ("nats", "path")  # rejected by name: see WARNED_OR_REJECTED
    )


def _replica_value(backend: str, key: str) -> Any:
    if key == "type":
        return "s3" if backend != "s3" else "gs"
    if key == "bool" or K.REPLICA_KEYS[key] == "bool":
        base = _config(replica=BASE_REPLICA[backend])
        return not _fields(base).get(f"settings[{key}]", key in ("sign-payload", "require-content-md5",
                                                                 "concurrent-writes"))
    return REPLICA_VALUES[K.REPLICA_KEYS[key]]


@pytest.mark.parametrize(("backend", "key"), _replica_cases())
def test_replica_key_changes_the_model_and_is_read(backend: str, key: str) -> None:
    base = dict(BASE_REPLICA[backend])
    if key == "type":
        base.pop("account-name", None), base.pop("host", None), base.pop("user", None)
        base = {"type": backend if backend != "nats" else "file", "path": "/backup/app"}
        other = {**base, "type": "s3", "bucket": "bkt", "path": "app"}
        assert _config(replica=other).dbs[0].replica.type == "s3"  # type: ignore[union-attr]
        assert new_client(_config(replica=other).dbs[0].replica.settings).type == "s3"  # type: ignore[union-attr]
        return
    value = _replica_value(backend, key)
    if key in PAIRED:
        base.update({key: "/tls/a.pem", PAIRED[key]: "/tls/b.pem"})
    changed = _changed(_config(replica=base), _config(replica={**base, key: value}))
    assert changed, f"{backend} {key}: no field of the model changed"
    for f in changed:
        if f.startswith("settings["):
            assert _setting_is_read(key, backend), f"{backend} {key}: the {backend} backend never reads it"
        else:
            assert _field_is_read(f), f"{backend} {key}: {f} never read outside the config modules"
    if key not in READ_BY_BACKEND_ONLY and not (backend == "s3" and key == "sse-customer-key-path"):
        new_client(_config(replica={**base, key: value}).dbs[0].replica.settings)  # type: ignore[union-attr]


@pytest.mark.parametrize("key", sorted(WARNED_OR_REJECTED))
def test_warned_or_rejected_by_name(key: str, caplog: pytest.LogCaptureFixture) -> None:
    how, where, fragment = WARNED_OR_REJECTED[key]
    name = key.split(" ")[0].split(".")[-1] if not key.startswith("replica.age.") else "age"
    caplog.set_level(logging.WARNING, logger="lifeboat.config")
    try:
        if where == "global":
            _config(top=fragment)
        elif where == "db":
            _config(db=fragment)
        elif where == "nats":
            new_client(_config(replica={**BASE_REPLICA["nats"], **fragment}).dbs[0].replica.settings)  # type: ignore[union-attr]
        elif where == "nats-url":
            _config(replica={"url": "nats://127.0.0.1:4222/bkt", **fragment})
        else:
            _config(replica={**BASE_REPLICA["file"], **fragment})
    except ConfigError as exc:
        assert how == "R", f"{key}: rejected, expected a warning: {exc}"
        assert name in str(exc) or (name in ("jwt", "seed") and "jwt/seed" in str(exc)), str(exc)
        assert "\n" not in str(exc)
        return
    assert how == "W", f"{key}: accepted, expected an error"
    assert any(name in r.getMessage() for r in caplog.records), f"{key}: no warning naming it"


@pytest.mark.parametrize(
    ("key", "value"), [("sign-payload", False), ("webdav-url", "https://dav.example/"), ("concurrent-writes", False)]
)
def test_top_level_default_no_replica_uses_is_warned(key: str, value: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="lifeboat.config")
    _config(top={key: value})
    assert any(r.getMessage().startswith(f"walk.yml: {key}: does not apply") for r in caplog.records)


def test_top_level_unsupported_flag_is_rejected_by_its_top_level_name() -> None:
    with pytest.raises(ConfigError, match=r"^walk.yml: auto-recover: auto-recover is not supported"):
        _config(top={"auto-recover": True})


def test_auto_recover_false_is_litestream_default_and_accepted() -> None:
    assert _config(replica={**BASE_REPLICA["file"], "auto-recover": False}).dbs[0].replica.auto_recover is False  # type: ignore[union-attr]


def test_models_are_dataclasses() -> None:
    """The walk reads every field of these; a non-dataclass model would hide fields from it."""
    assert all(dataclasses.is_dataclass(c) for c in (Config, DBConfig, ReplicaConfig))
