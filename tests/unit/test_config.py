"""agent/config.py: Litestream's YAML keys, strict validation, durations, sizes, env expansion."""

from __future__ import annotations

import logging
import os
import textwrap

import pytest
from lifeboat.agent.config import (
    Config,
    ConfigError,
    DBConfig,
    ReplicaConfig,
    config_for_db,
    default_config_path,
    expand_env,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)
from lifeboat.agent.storage import ConfigError as StorageConfigError


def cfg(text: str, **kw: object) -> Config:
    return parse_config(textwrap.dedent(text), "/etc/lifeboat.yml", **kw)  # type: ignore[arg-type]


def err(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        cfg(text)
    return str(exc.value)


@pytest.fixture(autouse=True)
def _no_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOG_LEVEL", raising=False)


# -- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("500ms", 0.5),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("0", 0.0),
        ("0s", 0.0),
        ("10us", 1e-5),
        ("10\u00b5s", 1e-5),
        ("10\u03bcs", 1e-5),
        ("7ns", 7e-9),
        ("2h45m30.5s", 9930.5),
        (".5s", 0.5),
        ("+3m", 180.0),
        ("24h", 86400.0),
        (2, 2.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10", "1d", "1 s", "abc", "1.2.3s", ".s", "1sx", "9999999999h", "nan"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_duration_sign_and_zero() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_duration("-1s")
    assert parse_duration("-1s", allow_negative=True) == -1.0
    with pytest.raises(ValueError, match="greater than 0"):
        parse_duration("0s", allow_zero=False)
    with pytest.raises(ValueError, match="missing unit"):
        parse_duration("10")
    with pytest.raises(ValueError):
        parse_duration(True)  # type: ignore[arg-type]


# -- sizes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64MiB", 64 * 1024 * 1024),
        ("5MB", 5_000_000),
        ("1024", 1024),
        ("5 MiB", 5 * 1024 * 1024),
        ("1.5GB", 1_500_000_000),
        ("1KiB", 1024),
        ("1kb", 1000),
        ("1k", 1000),
        ("2Mi", 2 * 1024 * 1024),
        ("100B", 100),
        ("1,000", 1000),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "-5MB", "5XB", "abc", "1e3", "99999EiB", -1])
def test_parse_size_rejects_garbage(text: str | int) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


# -- environment expansion ----------------------------------------------------------------------


def test_expand_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUCKET", "my-bucket")
    monkeypatch.setenv("A_1", "x")
    monkeypatch.delenv("UNSET_VAR", raising=False)
    assert expand_env("s3://$BUCKET/db") == "s3://my-bucket/db"
    assert expand_env("s3://${BUCKET}/db") == "s3://my-bucket/db"
    assert expand_env("$A_1-$A_1") == "x-x"
    assert expand_env("[$UNSET_VAR]") == "[]"
    assert expand_env("${UNSET_VAR}") == ""
    assert expand_env("pid-$PID") == f"pid-{os.getpid()}"
    monkeypatch.setenv("PID", "1")
    assert expand_env("${PID}") == str(os.getpid())  # Litestream maps PID before the environment
    # Go os.Expand corner cases.
    assert expand_env("cost: 5$") == "cost: 5$"
    assert expand_env("a$ b") == "a$ b"
    assert expand_env("a${}b") == "ab"
    assert expand_env("a${b") == "ab"
    assert expand_env("no dollars") == "no dollars"


def test_expand_env_in_config(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("REPLICA_BUCKET", "bkt")
    monkeypatch.setenv("SYNC", "5s")
    text = """
    dbs:
      - path: /data/app.db
        replica:
          url: s3://${REPLICA_BUCKET}/app
          sync-interval: $SYNC
    """
    c = cfg(text)
    assert c.dbs[0].replica is not None
    assert c.dbs[0].replica.url == "s3://bkt/app"
    assert c.dbs[0].replica.sync_interval == 5.0
    # -no-expand-env: the text is taken literally.
    with pytest.raises(ConfigError, match="sync-interval"):
        cfg(text, expand=False)


def test_default_config_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LITESTREAM_CONFIG", raising=False)
    monkeypatch.delenv("LIFEBOAT_CONFIG", raising=False)
    assert default_config_path() == "/etc/litestream.yml"
    monkeypatch.setenv("LIFEBOAT_CONFIG", "/b.yml")
    assert default_config_path() == "/b.yml"
    monkeypatch.setenv("LITESTREAM_CONFIG", "/a.yml")
    assert default_config_path() == "/a.yml"


# -- existing litestream.yml files --------------------------------------------------------------

FILE_EXAMPLE = """
# Litestream docs: replicating to a local directory.
dbs:
  - path: /var/lib/app/app.db
    replica:
      path: /mnt/backup/app
"""

S3_EXAMPLE = """
access-key-id: AKIAIOSFODNN7EXAMPLE
secret-access-key: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY

addr: ":9090"
logging:
  level: debug
  type: json

levels:
  - interval: 30s
  - interval: 5m
  - interval: 1h
  - interval: 24h

snapshot:
  interval: 12h
  retention: 72h

l0-retention: 10m

dbs:
  - path: /var/lib/app/app.db
    monitor-interval: 500ms
    checkpoint-interval: 2m
    busy-timeout: 5s
    min-checkpoint-page-count: 2000
    truncate-page-n: 0
    max-sync-wal-bytes: 1048576
    meta-path: /var/lib/app/meta
    replica:
      type: s3
      bucket: my-bucket
      path: app
      region: us-east-1
      endpoint: http://minio:9000
      force-path-style: true
      part-size: 10MiB
      concurrency: 4
      sync-interval: 10s
"""


def test_file_replica_example_parses_with_defaults() -> None:
    c = cfg(FILE_EXAMPLE)
    assert c.source == "/etc/lifeboat.yml"
    (db,) = c.dbs
    assert db == DBConfig(
        path="/var/lib/app/app.db",
        replica=ReplicaConfig(settings={"path": "/mnt/backup/app"}),
    )
    assert db.replica is not None
    assert db.replica.type == "file"
    assert db.replica.url is None
    assert db.meta_dir() == "/var/lib/app/.app.db-litestream"
    # Global defaults (Litestream's).
    assert c.addr is None
    assert c.levels == [30.0, 300.0, 3600.0]
    assert (c.snapshot_interval, c.snapshot_retention) == (86400.0, 86400.0)
    assert (c.l0_retention, c.l0_retention_check_interval) == (300.0, 15.0)
    assert c.retention_enabled is True
    assert c.validation_interval is None
    assert (c.logging_level, c.logging_type, c.logging_stderr) == ("info", "text", None)
    assert (c.shutdown_sync_timeout, c.shutdown_sync_interval) == (30.0, 0.5)
    assert (c.heartbeat_url, c.heartbeat_interval, c.exec) == (None, 300.0, None)
    # DB defaults.
    assert (db.monitor_interval, db.checkpoint_interval, db.busy_timeout) == (1.0, 60.0, 1.0)
    assert (db.min_checkpoint_page_count, db.truncate_page_n) == (1000, 121359)
    assert db.max_sync_wal_bytes == 64 * 1024 * 1024
    assert db.restore_if_db_not_exists is False
    assert (db.replica.sync_interval, db.replica.max_sync_ltx_files, db.replica.auto_recover) == (1.0, 256, False)


def test_s3_replica_example_parses() -> None:
    c = cfg(S3_EXAMPLE)
    assert c.addr == ":9090"
    assert (c.logging_level, c.logging_type) == ("debug", "json")
    assert c.levels == [30.0, 300.0, 3600.0, 86400.0]
    assert (c.snapshot_interval, c.snapshot_retention) == (43200.0, 259200.0)
    assert c.l0_retention == 600.0
    (db,) = c.dbs
    assert db.monitor_interval == 0.5
    assert db.checkpoint_interval == 120.0
    assert db.busy_timeout == 5.0
    assert db.min_checkpoint_page_count == 2000
    assert db.truncate_page_n == 121359  # 0 means the default
    assert db.max_sync_wal_bytes == 1048576
    assert db.meta_dir() == "/var/lib/app/meta"
    r = db.replica
    assert r is not None
    assert r.type == "s3"
    assert r.sync_interval == 10.0
    assert r.settings == {
        "type": "s3",
        "bucket": "my-bucket",
        "path": "app",
        "region": "us-east-1",
        "endpoint": "http://minio:9000",
        "force-path-style": True,
        "part-size": 10 * 1024 * 1024,
        "concurrency": 4,
        # top-level inline settings are defaults for every replica
        "access-key-id": "AKIAIOSFODNN7EXAMPLE",
        "secret-access-key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    }


def test_replica_settings_override_top_level_defaults() -> None:
    c = cfg(
        """
        region: eu-west-1
        sync-interval: 3s
        dbs:
          - path: /a.db
            replica: {url: s3://b/a, region: us-east-2}
          - path: /b.db
            replica: {url: s3://b/b}
          - path: /c.db
            replica: {url: file:///backups/c}
        """
    )
    a, b, c3 = (d.replica for d in c.dbs)
    assert a is not None and b is not None and c3 is not None
    assert a.settings["region"] == "us-east-2"
    assert b.settings["region"] == "eu-west-1"
    assert "region" not in c3.settings  # not a file replica setting
    assert a.sync_interval == b.sync_interval == c3.sync_interval == 3.0


def test_yaml_scalars_follow_yaml_v2() -> None:
    c = cfg(
        """
        socket: {enabled: yes, path: /tmp/ls.sock, permissions: 0660}
        retention: {enabled: off}
        dbs:
          - path: /a.db
            restore-if-db-not-exists: y
            replica:
              type: s3
              bucket: 0600          # yaml.v2 keeps a scalar's text for string keys
              access-key-id: 12345
        """
    )
    r = c.dbs[0].replica
    assert r is not None
    assert r.settings["bucket"] == "0600"
    assert r.settings["access-key-id"] == "12345"
    assert c.dbs[0].restore_if_db_not_exists is True
    assert (c.socket_enabled, c.socket_path, c.socket_permissions) == (True, "/tmp/ls.sock", 0o660)
    assert c.retention_enabled is False


def test_paths_are_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("HOME", "/home/me")
    monkeypatch.chdir("/tmp")
    c = cfg(
        """
        dbs:
          - path: ~/app.db
            replica: {path: ~/backup}
          - path: sqlite:///srv/x.db
            meta-path: ~/meta
            replica: {path: rel/backup}
          - path: data/../y.db
            replica: {url: file:///b/y}
        """
    )
    assert [d.path for d in c.dbs] == ["/home/me/app.db", "/srv/x.db", "/tmp/y.db"]
    assert c.dbs[0].replica is not None and c.dbs[0].replica.settings["path"] == "/home/me/backup"
    assert c.dbs[1].replica is not None and c.dbs[1].replica.settings["path"] == "/tmp/rel/backup"
    assert c.dbs[1].meta_dir() == "/home/me/meta"
    assert c.db("~/app.db") is c.dbs[0]
    assert c.db("/nope.db") is None


def test_load_config_reads_file(tmp_path: object) -> None:
    from pathlib import Path

    p = Path(str(tmp_path)) / "litestream.yml"
    p.write_text(S3_EXAMPLE)
    c = load_config(str(p))
    assert c.source == str(p)
    assert c.dbs[0].path == "/var/lib/app/app.db"
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(Path(str(tmp_path)) / "missing.yml"))


def test_config_for_db() -> None:
    c = config_for_db("/data/app.db", "s3://bkt/app", sync_interval="500ms", region="eu-west-1")
    assert c.source == "<args>"
    (db,) = c.dbs
    assert db.path == "/data/app.db"
    assert db.replica is not None
    assert db.replica.url == "s3://bkt/app"
    assert db.replica.sync_interval == 0.5
    assert db.replica.settings == {"url": "s3://bkt/app", "region": "eu-west-1"}
    assert config_for_db("/a.db", "/backups/a", sync_interval=2).dbs[0].replica.sync_interval == 2.0  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"<args>: dbs\[0\]\.replica: unknown key \"sync-intervall\""):
        config_for_db("/a.db", "s3://b/a", sync_intervall="1s")
    with pytest.raises(ConfigError, match="unknown scheme"):
        config_for_db("/a.db", "ftp://b/a")


def test_log_level_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "WARN")
    assert cfg(FILE_EXAMPLE).logging_level == "warn"


def test_per_db_snapshot_is_promoted() -> None:
    c = cfg(
        """
        dbs:
          - path: /a.db
            snapshot: {interval: 1h, retention: 6h}
            replica: {path: /b/a}
        """
    )
    assert (c.snapshot_interval, c.snapshot_retention) == (3600.0, 21600.0)
    msg = err(
        """
        dbs:
          - path: /a.db
            snapshot: {interval: 1h}
            replica: {path: /b/a}
          - path: /b.db
            snapshot: {interval: 2h}
            replica: {path: /b/b}
        """
    )
    assert "dbs[1].snapshot: must be identical" in msg


# -- errors -------------------------------------------------------------------------------------


def test_config_error_is_the_storage_config_error() -> None:
    assert ConfigError is StorageConfigError
    assert issubclass(ConfigError, ValueError)


def test_unknown_replica_key_names_path_and_suggests() -> None:
    msg = err(
        """
        dbs:
          - path: /a.db
            replica:
              url: s3://b/a
              sync-intervall: 1s
        """
    )
    assert msg.startswith('/etc/lifeboat.yml: dbs[0].replica: unknown key "sync-intervall"')
    assert 'did you mean "sync-interval"' in msg
    assert "line 6" in msg


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("bogus: 1\ndbs: [{path: /a.db, replica: {path: /b}}]", '(top level): unknown key "bogus"'),
        ("dbs: [{path: /a.db, paht: x, replica: {path: /b}}]", 'dbs[0]: unknown key "paht"'),
        ("snapshot: {intervl: 1h}\ndbs: [{path: /a.db, replica: {path: /b}}]", 'snapshot: unknown key "intervl"'),
        ("levels: [{interval: 1m, x: 1}]\ndbs: [{path: /a.db, replica: {path: /b}}]", 'levels[0]: unknown key "x"'),
        ("logging: {levle: debug}\ndbs: [{path: /a.db, replica: {path: /b}}]", 'logging: unknown key "levle"'),
        (
            "dbs: [{path: /a.db, replica: {path: /b, age: {identitys: []}}}]",
            'dbs[0].replica.age: unknown key "identitys"',
        ),
        ("url: s3://b/x\ndbs: [{path: /a.db, replica: {path: /b}}]", '"url" belongs in a database'),
    ],
)
def test_unknown_keys_everywhere(text: str, where: str) -> None:
    msg = err(text)
    assert msg.startswith("/etc/lifeboat.yml: ")
    assert where in msg


def test_ignored_litestream_03_keys_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lifeboat.config"):
        c = cfg(
            """
            dbs:
              - path: /a.db
                max-checkpoint-page-count: 10000
                replica:
                  url: s3://b/a
                  name: old
                  retention: 24h
                  retention-check-interval: 1h
                  snapshot-interval: 1h
                  validation-interval: 1m
            """
        )
    assert c.dbs[0].replica is not None
    assert c.dbs[0].replica.settings == {"url": "s3://b/a"}
    warned = "\n".join(r.getMessage() for r in caplog.records if r.name == "lifeboat.config")
    for key in (
        "dbs[0].max-checkpoint-page-count",
        "dbs[0].replica.name",
        "dbs[0].replica.retention",
        "dbs[0].replica.retention-check-interval",
        "dbs[0].replica.snapshot-interval",
        "dbs[0].replica.validation-interval",
    ):
        assert f"{key}: ignored" in warned


def test_deprecated_replicas_list(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lifeboat.config"):
        c = cfg("dbs: [{path: /a.db, replicas: [{url: s3://b/a}]}]")
    assert c.dbs[0].replica is not None and c.dbs[0].replica.url == "s3://b/a"
    assert any("deprecated" in r.getMessage() for r in caplog.records)
    assert "multiple replicas" in err("dbs: [{path: /a.db, replicas: [{url: s3://b/a}, {url: s3://b/c}]}]")
    assert "both replica: and replicas:" in err("dbs: [{path: /a.db, replica: {path: /b}, replicas: [{path: /c}]}]")


def test_key_of_another_backend_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lifeboat.config"):
        c = cfg("dbs: [{path: /a.db, replica: {url: s3://b/a, account-name: x}}]")
    assert c.dbs[0].replica is not None
    assert any("dbs[0].replica.account-name: does not apply to a s3 replica" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("replica", "needle"),
    [
        ("{type: webdav, webdav-url: 'http://dav'}", "WebDAV replicas are not supported"),
        ("{url: 'webdav://dav/x'}", "WebDAV replicas are not supported"),
        ("{type: oss, bucket: b}", "OSS replicas are not supported"),
        ("{url: 'oss://b/x'}", "OSS replicas are not supported"),
        ("{type: ftp}", 'unknown replica type "ftp"'),
        ("{url: s3://b/x, age: {recipients: [age1xyz]}}", "age encryption is not supported"),
        ("{url: 'ftp://h/x'}", "dbs[0].replica.url: invalid replica URL"),
        ("{url: relative/path}", "dbs[0].replica.url: invalid replica URL"),
        ("{url: 'sftp://h:notaport/x'}", "dbs[0].replica.url: invalid replica URL"),
        ("{type: gs, url: s3://b/x}", 'type "gs" does not match the URL scheme "s3"'),
        ("{url: s3://b/x, path: y}", "dbs[0].replica.path: cannot be combined with url:"),
        ("{path: 's3://b/x'}", "cannot be a URL"),
        ("{type: s3, path: x}", "needs a bucket"),
        ("{type: file}", "needs a path"),
        ("{url: 'sftp://host/x'}", "needs a user"),
        ("{url: 'nats://host'}", "needs a bucket"),
        ("{path: /backups/../etc}", 'dbs[0].replica.path: must not contain ".."'),
        ("{type: s3, bucket: b, path: 'a/../../b'}", 'must not contain ".."'),
    ],
)
def test_bad_replicas(replica: str, needle: str) -> None:
    msg = err(f"dbs:\n  - path: /a.db\n    replica: {replica}\n")
    assert msg.startswith("/etc/lifeboat.yml: ")
    assert needle in msg


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("dbs: []", "/etc/lifeboat.yml: dbs: no databases configured"),
        ("addr: ':9090'", "no databases configured"),
        ("", "no databases configured"),
        ("- a\n- b", "expected a mapping at the top level"),
        ("dbs: [{path: /a.db}]", "dbs[0]: no replica configured"),
        ("dbs: [{replica: {path: /b}}]", "dbs[0]: a database needs a path:"),
        ("dbs: [{dir: /data, replica: {path: /b}}]", "pattern: is required with dir:"),
        ("dbs: [{path: /a.db, pattern: '*.db', replica: {path: /b}}]", "pattern: can only be used with dir:"),
        ("dbs: [{path: /a.db, meta-dir: /m, replica: {path: /b}}]", "meta-dir: can only be used with dir:"),
        ("dbs: [{dir: /d, pattern: '*.db', meta-path: /m, meta-dir: /n, replica: {path: /b}}]",
         "cannot specify both meta-path: and meta-dir:"),
        ("dbs: [{path: /a.db, dir: /d, replica: {path: /b}}]", "cannot specify both path: and dir:"),
        ("dbs: [{path: /a.db, watch: true, replica: {path: /b}}]", "watch: can only be enabled with dir:"),
        ('dbs: [{path: "/a\\0.db", replica: {path: /b}}]', "dbs[0].path: must not contain a NUL"),
        (
            "dbs: [{path: /a.db, replica: {path: /b}}, {path: /a.db, replica: {path: /c}}]",
            "dbs[1].path: /a.db is already configured in dbs[0]",
        ),
    ],
)
def test_bad_structure(text: str, needle: str) -> None:
    assert needle in err(text)


DB = "\ndbs: [{path: /a.db, replica: {url: s3://b/a}}]\n"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        # types: the key is named
        ("l0-retention: abc" + DB, "l0-retention: invalid duration 'abc'"),
        ("verify-compaction: maybe" + DB, "verify-compaction: expected true or false"),
        (
            "dbs: [{path: /a.db, min-checkpoint-page-count: many, replica: {url: s3://b/a}}]",
            "min-checkpoint-page-count: expected an integer",
        ),
        ("dbs: [{path: /a.db, min-checkpoint-page-count: '5', replica: {url: s3://b/a}}]", "expected an integer"),
        (
            "dbs: [{path: /a.db, max-sync-wal-bytes: lots, replica: {url: s3://b/a}}]",
            "max-sync-wal-bytes: invalid size",
        ),
        (
            "dbs: [{path: /a.db, replica: {url: s3://b/a, concurrency: four}}]",
            "dbs[0].replica.concurrency: expected an integer",
        ),
        ("dbs: [{path: /a.db, replica: {url: s3://b/a, root-cas: x}}]", "root-cas: expected a list"),
        ("levels: {interval: 1m}" + DB, "levels: expected a list"),
        ("dbs: {path: /a.db}", "dbs: expected a list"),
        ("snapshot: 24h" + DB, "snapshot: expected a mapping"),
        # bare numbers would be nanoseconds in Litestream
        ("dbs: [{path: /a.db, replica: {url: s3://b/a, sync-interval: 10}}]", 'missing unit (e.g. "10s")'),
        # durations that make no sense
        ("dbs: [{path: /a.db, replica: {url: s3://b/a, sync-interval: 0s}}]", "sync-interval: must be greater than 0"),
        (
            "dbs: [{path: /a.db, replica: {url: s3://b/a, sync-interval: -1s}}]",
            "sync-interval: duration '-1s' must not be negative",
        ),
        ("dbs: [{path: /a.db, replica: {url: s3://b/a, sync-interval: 25h}}]", "sync-interval: 25h is out of range"),
        (
            "dbs: [{path: /a.db, monitor-interval: 0s, replica: {url: s3://b/a}}]",
            "monitor-interval: duration '0s' must be greater than 0",
        ),
        ("levels: [{interval: 0s}]" + DB, "levels[0].interval: duration '0s' must be greater than 0"),
        ("levels: [{interval: 500us}]" + DB, "levels[0].interval: 0.5ms is too short"),
        ("levels: [{}]" + DB, "levels[0]: interval: is required"),
        ("levels: [" + ", ".join(["{interval: 1m}"] * 9) + "]" + DB, "levels: at most 8 levels"),
        ("snapshot: {interval: 0s}" + DB, "snapshot.interval: duration '0s' must be greater than 0"),
        ("snapshot: {retention: 0s}" + DB, "snapshot.retention: duration '0s' must be greater than 0"),
        ("l0-retention-check-interval: 0s" + DB, "l0-retention-check-interval: duration '0s' must be greater"),
        ("shutdown-sync-interval: 0s" + DB, "shutdown-sync-interval: duration"),
        ("heartbeat-interval: 30s" + DB, "heartbeat-interval: 30s is too short (minimum 1m)"),
        ("heartbeat-url: ftp://x" + DB, "heartbeat-url: must be an http:// or https:// URL"),
        ("logging: {level: loud}" + DB, 'logging.level: unknown level "loud"'),
        ("logging: {type: xml}" + DB, 'logging.type: unknown type "xml"'),
        ("dbs: [{path: /a.db, replica: {url: s3://b/a, part-size: 1MiB}}]", "part-size: must be at least 5MiB"),
        (
            "dbs: [{path: /a.db, replica: {url: s3://b/a, max-sync-ltx-files: 0}}]",
            "max-sync-ltx-files: must be at least 1",
        ),
        ("dbs: [{path: /a.db, truncate-page-n: -1, replica: {url: s3://b/a}}]", "truncate-page-n: must be at least 0"),
    ],
)
def test_bad_values_name_the_key(text: str, needle: str) -> None:
    msg = err(text)
    assert msg.startswith("/etc/lifeboat.yml: ")
    assert needle in msg


def test_zero_where_zero_means_something() -> None:
    c = cfg(
        """
        l0-retention: 0
        shutdown-sync-timeout: 0s
        levels: []
        dbs:
          - path: /a.db
            checkpoint-interval: 0s
            busy-timeout: 0
            replica: {url: s3://b/a}
        """
    )
    assert c.l0_retention == 0.0
    assert c.shutdown_sync_timeout == 0.0
    assert c.levels == []
    assert c.dbs[0].checkpoint_interval == 0.0
    assert c.dbs[0].busy_timeout == 0.0


def test_yaml_syntax_error_names_file_and_line() -> None:
    msg = err("dbs:\n  - path: /a.db\n    replica: {url: s3://b/a\n")
    assert msg.startswith("/etc/lifeboat.yml: line ")
    assert "invalid YAML" in msg


def test_duplicate_key_is_an_error() -> None:
    msg = err("dbs:\n  - path: /a.db\n    path: /b.db\n    replica: {path: /b}\n")
    assert "'path' is defined twice (first on line 2)" in msg
    assert "line 3" in msg


# -- secrets ------------------------------------------------------------------------------------

SECRET = "hunter2-Sup3rS3cret"


def test_secrets_not_in_repr_or_redacted() -> None:
    c = cfg(
        f"""
        dbs:
          - path: /a.db
            replica:
              url: s3://b/a
              access-key-id: AKIA
              secret-access-key: {SECRET}
              sse-customer-key: {SECRET}x
          - path: /b.db
            replica:
              url: sftp://user:{SECRET}@host/backups
          - path: /c.db
            replica:
              url: nats://host/bucket
              token: {SECRET}
              seed: {SECRET}
              jwt: {SECRET}
              nkey: {SECRET}
              password: {SECRET}
        """
    )
    for db in c.dbs:
        assert db.replica is not None
        assert SECRET not in repr(db.replica)
        assert SECRET not in repr(db.replica.redacted())
    assert SECRET not in repr(c)
    s3 = c.dbs[0].replica
    assert s3 is not None
    assert s3.redacted()["secret-access-key"] == "REDACTED"
    assert s3.redacted()["access-key-id"] == "AKIA"
    assert s3.settings["secret-access-key"] == SECRET  # the real value is still there for the backend
    sftp = c.dbs[1].replica
    assert sftp is not None
    assert sftp.redacted()["url"] == "sftp://user:REDACTED@host/backups"
    assert sftp.url == f"sftp://user:{SECRET}@host/backups"
    assert "token" in repr(c.dbs[2].replica)


@pytest.mark.parametrize(
    "text",
    [
        f"dbs: [{{path: /a.db, replica: {{url: s3://b/a, secret-access-key: {{x: {SECRET}}}}}}}]",
        f"dbs: [{{path: /a.db, replica: {{url: 'sftp://u:{SECRET}@h:bad/x'}}}}]",
        f"dbs: [{{path: /a.db, replica: {{url: 'sftp://u:{SECRET}@h/x', bogus: 1}}}}]",
        f"dbs: [{{path: /a.db, replica: {{url: 'sftp://u:{SECRET}@h/x', tls: {SECRET}}}}}]",
        f"dbs: [{{path: /a.db, replica: {{url: s3://b/a, account-key: {SECRET}, max-reconnects: {SECRET}}}}}]",
        f"secret-access-key: {SECRET}\ndbs: [{{path: /a.db, replica: {{url: s3://b/a, region: [{SECRET}]}}}}]",
        f"secret-access-key: {SECRET}\ndbs: [{{path: /a.db, replica: {{url: s3://b/a}}}}\n  - x: {SECRET}\n",
    ],
)
def test_secrets_not_in_errors(text: str) -> None:
    msg = err(text)
    assert SECRET not in msg


def test_ltx_page_encoding() -> None:
    base = "dbs: [{path: /data/a.db, replica: {url: file:///r}}]\n"
    assert cfg(base).ltx_page_encoding == "frame"
    assert cfg("ltx-page-encoding: block\n" + base).ltx_page_encoding == "block"
    message = err("ltx-page-encoding: lz4\n" + base)
    assert "ltx-page-encoding" in message and "frame, block" in message
