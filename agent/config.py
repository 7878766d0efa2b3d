"""The agent's YAML configuration: Litestream 0.5's keys, validated strictly.

An existing `litestream.yml` loads unchanged. Where Litestream silently ignores a key (yaml.v2 in
non-strict mode), Lifeboat refuses it with a `ConfigError` naming the file and the key path, because
a typo otherwise loses a setting without a word. Keys that Litestream accepts but no longer uses
(0.3 leftovers) only log a warning on the `lifeboat.config` logger.

Everything here is pure: `load_config` reads one file, the rest only looks at its arguments and
the environment (for `$VAR` expansion and `LOG_LEVEL`). Durations are float seconds and sizes
int bytes throughout.

This module is the public face; the work is done in `config_yaml` (YAML with line numbers),
`config_values` (Go-style durations, sizes, `$VAR` and paths), `config_keys` (the schema),
`config_parser` (validation), `config_model` (the dataclasses) and `config_secrets` (redaction).
"""

from __future__ import annotations

import os
from typing import Any

from .config_model import META_DIR_SUFFIX, Config, DBConfig, ReplicaConfig
from .config_parser import build_config
from .config_secrets import SECRET_KEYS
from .config_values import expand_env, expand_path, parse_duration, parse_size
from .config_yaml import load_yaml
from .storage import ConfigError

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

DEFAULT_CONFIG_PATH = "/etc/litestream.yml"


def default_config_path() -> str:
    """`$LITESTREAM_CONFIG`, else `$LIFEBOAT_CONFIG`, else `/etc/litestream.yml`."""
    return os.environ.get("LITESTREAM_CONFIG") or os.environ.get("LIFEBOAT_CONFIG") or DEFAULT_CONFIG_PATH


def parse_config(text: str, source: str, *, expand: bool = True) -> Config:
    """Parse a Litestream-style YAML config. `source` names the file in error messages.

    With `expand`, `$VAR`/`${VAR}`/`$PID` are expanded in the whole text before YAML parsing, as
    Litestream does (disable with `-no-expand-env`). Raises `ConfigError`.
    """
    if expand:
        text = expand_env(text)
    return build_config(load_yaml(text, source), source)


def load_config(path: str, *, expand: bool = True) -> Config:
    """Read and parse the config file at `path` (`~` expanded). Raises `ConfigError`."""
    full = expand_path(path)
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
    return build_config({"dbs": [{"path": path, "replica": replica}]}, "<args>")
