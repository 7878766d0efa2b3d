"""Which files of a `dir:` entry are databases, and how each one is configured.

Pure and light (no replication machinery): `lifeboat replicate` discovers databases with it, and
the one-shot commands (`restore`, `ltx`, `status`, `databases`, `reset`) resolve a database path
given on the command line to the configuration its directory entry derives for it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import posixpath
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

from .config_model import META_DIR_SUFFIX, Config, DBConfig, ReplicaConfig
from .config_values import expand_path

SQLITE_HEADER = b"SQLite format 3\0"
SKIPPED_SUFFIXES = ("-wal", "-shm", "-journal")  # SQLite's companions of a database, never databases


def is_sqlite_database(path: str) -> bool:
    """Whether the file starts with SQLite's header (a file just created, still empty, does not)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


class DirectorySource:
    """Which files of one `dir:` entry are databases, and how each one is configured."""

    def __init__(self, entry: DBConfig) -> None:
        assert entry.pattern is not None
        self.entry = entry
        self.root = entry.path
        self.pattern = entry.pattern

    def wanted_name(self, name: str) -> bool:
        """A file name the pattern selects (SQLite's -wal, -shm and -journal files never are)."""
        return not name.endswith(SKIPPED_SUFFIXES) and fnmatch.fnmatchcase(name, self.pattern)

    def skipped_dir(self, path: str) -> bool:
        """Local replication state (`.<db>-litestream`, `meta-dir`) is never searched for databases."""
        name = os.path.basename(path)
        meta = self.entry.meta_dir_root
        return (name.startswith(".") and name.endswith(META_DIR_SUFFIX)) or (
            meta is not None and (path == meta or path.startswith(meta + os.sep))
        )

    def owns(self, db_path: str) -> bool:
        """Whether `db_path` (absolute, normalised) is a place this entry looks for databases: under
        the root (directly, unless recursive), named as the pattern says, outside local state. The
        file itself need not exist: a database being restored does not yet."""
        rel = os.path.relpath(db_path, self.root)
        if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep):
            return False
        parts = rel.split(os.sep)
        if len(parts) > 1 and not self.entry.recursive:
            return False
        parents = [os.path.join(self.root, *parts[: i + 1]) for i in range(len(parts) - 1)]
        return self.wanted_name(parts[-1]) and not any(self.skipped_dir(p) for p in parents)

    def directories(self, top: str | None = None) -> Iterator[str]:
        """`top` (the root by default) and, if recursive, every directory below it worth searching."""
        top = top or self.root
        yield top
        if not self.entry.recursive:
            return
        for dirpath, dirnames, _files in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if not self.skipped_dir(os.path.join(dirpath, d)))
            for d in dirnames:
                yield os.path.join(dirpath, d)

    def find(self, top: str | None = None) -> list[str]:
        """Every database under `top` (the root by default), sorted."""
        found = []
        for d in self.directories(top):
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue  # removed meanwhile, or unreadable: nothing to replicate there
            for e in entries:
                if self.wanted_name(e.name) and e.is_file() and is_sqlite_database(e.path):
                    found.append(e.path)
        return sorted(found)

    def config_for(self, db_path: str) -> DBConfig:
        """The configuration of one database found under the directory (Litestream's derivation)."""
        rel = os.path.relpath(db_path, self.root)
        entry = self.entry
        if entry.meta_dir_root:
            meta = os.path.join(entry.meta_dir_root, rel + META_DIR_SUFFIX)
        elif entry.meta_path:
            head, tail = os.path.split(rel)
            meta = os.path.join(entry.meta_path, head, f".{tail}{META_DIR_SUFFIX}")
        else:
            meta = None  # beside the database, as for any other
        replica = None
        if entry.replica is not None:
            replica = dataclasses.replace(entry.replica, settings=replica_settings_for(entry.replica, rel))
        return dataclasses.replace(
            entry, path=db_path, meta_path=meta, replica=replica, pattern=None, recursive=False, watch=False,
            meta_dir_root=None,
        )


def replica_settings_for(replica: ReplicaConfig, rel: str) -> dict[str, object]:
    """The replica settings with the database's relative path appended to the URL's path, or to
    `path:` when the replica is given by components."""
    settings = dict(replica.settings)
    rel = rel.replace(os.sep, "/")
    if settings.get("url"):
        u = urlsplit(str(settings["url"]))
        joined = "/" + posixpath.join(u.path, rel).lstrip("/")
        settings["url"] = urlunsplit(u._replace(path=joined))
    elif replica.type == "file":
        settings["path"] = os.path.join(str(settings.get("path") or ""), rel)
    else:
        base = str(settings.get("path") or "").strip("/")
        settings["path"] = posixpath.join(base, rel) if base else rel
    return settings


def resolve(conf: Config, path: str) -> DBConfig | None:
    """The configuration of the database at `path`: its own `dbs:` entry, else the one the first
    `dir:` entry that owns the path derives for it (None: the config does not cover it)."""
    want = expand_path(path)
    explicit = conf.db(want)
    if explicit is not None:
        return explicit
    for entry in conf.directories:
        source = DirectorySource(entry)
        if source.owns(want):
            return source.config_for(want)
    return None


def all_databases(conf: Config) -> list[DBConfig]:
    """The `dbs:` entries, then every database found now under each `dir:` entry."""
    out = list(conf.dbs)
    seen = {db.path for db in out}
    for entry in conf.directories:
        source = DirectorySource(entry)
        for path in source.find():
            if path not in seen:
                seen.add(path)
                out.append(source.config_for(path))
    return out
