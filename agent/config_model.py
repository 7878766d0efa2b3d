"""The typed result of parsing the config: `Config`, its `DBConfig`s and their `ReplicaConfig`s.

Defaults here are Litestream 0.5's. Durations are float seconds and sizes int bytes throughout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .config_secrets import redact_settings
from .config_values import DAY, expand_path
from .storage import ConfigError, replica_type

META_DIR_SUFFIX = "-litestream"  # Litestream's MetaDirSuffix: the Go binary and Lifeboat share state.
DEFAULT_SOCKET_PATH = "/var/run/litestream.sock"
DEFAULT_TRUNCATE_PAGE_N = 121359  # about 500 MB of WAL at 4 KiB pages


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
        return redact_settings(self.settings)

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
    # Directory replication (`dir:`): `path` is then the directory and these say which files in it
    # are databases; each one found is replicated with the other settings of this entry.
    pattern: str | None = None
    recursive: bool = False
    watch: bool = False
    meta_dir_root: str | None = None  # `meta-dir:`

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
    directories: list[DBConfig] = field(default_factory=list)  # `dir:` entries (see DBConfig.pattern)
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
    logging_stderr: bool | None = None  # None: stderr (Lifeboat's default); False: stdout, as Litestream
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
    ltx_page_encoding: str = "frame"  # Lifeboat's own key: "block" trades Litestream < 0.5.16 for CPU
    source: str = "<args>"

    def db(self, path: str) -> DBConfig | None:
        """The database configured at `path` (after `~` and relative-path expansion), if any."""
        wanted = expand_path(path)
        return next((d for d in self.dbs if d.path == wanted), None)
