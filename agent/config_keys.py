"""The config's schema: which keys exist where, what kind of value each takes, and their limits."""

from __future__ import annotations

# kind: "str" | "bool" | "int" | "duration" | "size" | "strlist"
REPLICA_KEYS: dict[str, str] = {
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
REPLICA_ONLY = {"type", "url", "path"}
# Accepted by Litestream, never used by 0.5: a warning.
IGNORED_REPLICA_KEYS = {
    "name": "deprecated and unused",
    "validation-interval": "parsed but unused by Litestream 0.5; use validation.interval",
    "snapshot-interval": "a Litestream 0.3 setting; use the top-level snapshot.interval",
    "retention": "a Litestream 0.3 setting; use the top-level snapshot.retention",
    "retention-check-interval": "a Litestream 0.3 setting, unused by 0.5",
}
IGNORED_GLOBAL_KEYS = {"validation-interval": IGNORED_REPLICA_KEYS["validation-interval"]}
# Set at all: a warning (Litestream's meaning has no counterpart here).
IGNORED_REPLICA_SETTINGS = {
    "max-sync-ltx-files": "lifeboat uploads every pending L0 file, in order, on each sync",
}
# Set to true: an error (Litestream's behaviour is not implemented; the default is what runs).
UNSUPPORTED_REPLICA_FLAGS = {
    "auto-recover": "auto-recover is not supported: a missing local L0 file stops uploads and is named in "
    "the log; run `lifeboat reset DB` to start a new snapshot",
}
IGNORED_DB_KEYS = {"max-checkpoint-page-count": "a Litestream 0.3 setting, unused by 0.5"}

COMMON_REPLICA = {"type", "url", "path", "sync-interval", "max-sync-ltx-files", "auto-recover", "age"}
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
BACKEND_KEYS: dict[str, set[str]] = {
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
SUPPORTED_TYPES = tuple(BACKEND_KEYS)
UNSUPPORTED_TYPES = {
    "webdav": "WebDAV replicas are not supported by lifeboat",
    "webdavs": "WebDAV replicas are not supported by lifeboat",
    "oss": "Alibaba OSS replicas are not supported by lifeboat",
}

# The keys of the global blocks, and of a replica's `age:` block.
SUBKEYS: dict[str, set[str]] = {
    "socket": {"enabled", "path", "permissions"},
    "levels": {"interval"},
    "snapshot": {"interval", "retention"},
    "validation": {"interval"},
    "retention": {"enabled"},
    "logging": {"level", "type", "stderr", "source"},
    "age": {"identities", "recipients"},
}
# The keys of the global blocks, and of a replica's `age:` block.
SUBKEYS: dict[str, set[str]] = {
    "socket": {"enabled", "path", "permissions"},
    "levels": {"interval"},
    "snapshot": {"interval", "retention"},
    "validation": {"interval"},
    "retention": {"enabled"},
    "logging": {"level", "type", "stderr", "source"},
    "age": {"identities", "recipients"},
}
GLOBAL_KEYS = {
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
    "ltx-page-encoding",
}
DB_KEYS = {
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
LTX_PAGE_ENCODINGS = ("frame", "block")  # `ltx-page-encoding`: see ltx.use_block_encoding
LOG_LEVELS = {"trace", "debug", "info", "warn", "warning", "error"}
# yaml.v2 (Litestream's YAML library) reads these as booleans too; PyYAML's resolver does not.
YAML11_SHORT_BOOLS = {"y": True, "Y": True, "n": False, "N": False}

MIN_PART_SIZE = 5 * 1024 * 1024  # the S3 multipart minimum
MAX_LEVELS = 8  # non-snapshot levels L1..L8; L9 is the snapshot level.
MIN_INTERVAL = 0.001  # below 1 ms an interval is a mistake (e.g. a bare number read as nanoseconds)
