"""How a database found under a `dir:` entry is configured (Litestream's derivation)."""

from __future__ import annotations

from pathlib import Path

from lifeboat.agent.config_model import DBConfig, ReplicaConfig
from lifeboat.agent.dirsource import DirectorySource, is_sqlite_database


def _entry(settings: dict[str, object], **kw: object) -> DBConfig:
    return DBConfig(path="/data", pattern="*.db", recursive=True, replica=ReplicaConfig(settings=settings), **kw)


def test_the_relative_path_is_appended_to_the_replica_url_or_path() -> None:
    cases = [
        ({"url": "s3://b/pre?endpoint=http://h:1"}, "url", "s3://b/pre/team/a.db?endpoint=http://h:1"),
        ({"url": "s3://b"}, "url", "s3://b/team/a.db"),
        ({"url": "file:///backups"}, "url", "file:///backups/team/a.db"),
        ({"type": "s3", "bucket": "b", "path": "pre/"}, "path", "pre/team/a.db"),
        ({"type": "s3", "bucket": "b"}, "path", "team/a.db"),
        ({"type": "file", "path": "/backups"}, "path", "/backups/team/a.db"),
    ]
    for settings, key, want in cases:
        db = DirectorySource(_entry(settings)).config_for("/data/team/a.db")
        assert db.replica is not None and db.replica.settings[key] == want, settings
        assert (db.path, db.pattern, db.watch) == ("/data/team/a.db", None, False)


def test_local_state_goes_beside_the_database_or_under_meta_dir_or_meta_path() -> None:
    found = "/data/team/a.db"
    assert DirectorySource(_entry({"url": "s3://b"})).config_for(found).meta_dir() == "/data/team/.a.db-litestream"
    meta_dir = DirectorySource(_entry({"url": "s3://b"}, meta_dir_root="/m")).config_for(found)
    assert meta_dir.meta_dir() == "/m/team/a.db-litestream"
    meta_path = DirectorySource(_entry({"url": "s3://b"}, meta_path="/m")).config_for(found)
    assert meta_path.meta_dir() == "/m/team/.a.db-litestream"


def test_databases_are_recognised_by_their_header_and_state_is_skipped(tmp_path: Path) -> None:
    import sqlite3

    (tmp_path / ".a.db-litestream").mkdir()
    sqlite3.connect(tmp_path / ".a.db-litestream" / "x.db").execute("CREATE TABLE t (x)").connection.commit()
    sqlite3.connect(tmp_path / "a.db").execute("CREATE TABLE t (x)").connection.commit()
    (tmp_path / "a.db-wal").write_bytes(b"SQLite format 3\0")
    (tmp_path / "text.db").write_text("hello")
    assert is_sqlite_database(str(tmp_path / "a.db")) and not is_sqlite_database(str(tmp_path / "text.db"))
    source = DirectorySource(DBConfig(path=str(tmp_path), pattern="*.db", recursive=True))
    assert source.find() == [str(tmp_path / "a.db")]
