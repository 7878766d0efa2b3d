"""Directory replication (`dir:`, `pattern:`, `recursive:`, `watch:`, `meta-dir:`).

Every SQLite database under the directory (matched by `pattern` on its file name and recognised by
its header) is replicated to `<replica path>/<path relative to the directory>`, as Litestream lays
it out, so `litestream restore` of `<replica URL>/<relative path>` restores it. With `watch`, one
inotify instance with one watch per directory (never per file) reports new and removed databases
while the agent runs; a periodic rescan is the fallback where inotify is missing or overflows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import logging
import os
import posixpath
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

from .config_model import META_DIR_SUFFIX, DBConfig, ReplicaConfig
from .store import DatabaseSpec, Store
from .watch import INOTIFY_EVENT, INOTIFY_READ_SIZE

log = logging.getLogger("lifeboat.dir")

SQLITE_HEADER = b"SQLite format 3\0"
SKIPPED_SUFFIXES = ("-wal", "-shm", "-journal")  # SQLite's companions of a database, never databases
DEBOUNCE_SECONDS = 0.25  # as Litestream: a burst of events about one file is looked at once
RESCAN_SECONDS = 30.0  # the safety net under inotify; the only detector without it
REMOVE_TIMEOUT = 10.0  # final sync of a database whose file went away

# inotify(7) event bits
IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x2, 0x8, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_Q_OVERFLOW, IN_IGNORED, IN_ISDIR = 0x100, 0x200, 0x4000, 0x8000, 0x40000000
WATCH_MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE


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


class DirectoryMonitor:
    """Keeps the store's set of databases equal to the databases under one directory."""

    def __init__(self, source: DirectorySource, store: Store, make_spec: Callable[[DBConfig], DatabaseSpec]) -> None:
        self.source = source
        self.store = store
        self.make_spec = make_spec
        self.known: set[str] = set()
        self._adding: dict[str, asyncio.Task[None]] = {}
        self._pending: set[str] = set()
        self._pending_dirs: set[str] = set()
        self._rescan = False
        self._flush_handle: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._watches: dict[int, str] = {}
        self._inotify: object | None = None

    async def run(self, stop: asyncio.Event, known: set[str] | None = None) -> None:
        """Add every database found now; with `watch`, follow additions and removals until `stop`."""
        self.known |= known or set()
        try:
            if self.source.entry.watch:
                self._start_inotify()
            await self.reconcile(set(await asyncio.to_thread(self.source.find)))
            if not self.source.entry.watch:
                await stop.wait()
                return
            while not stop.is_set():
                try:
                    await asyncio.wait_for(self._wake.wait(), RESCAN_SECONDS)
                except TimeoutError:
                    self._rescan = True  # events can be missed (a full queue, an unwatchable directory)
                self._wake.clear()
                await self._flush()
        finally:
            self._stop_inotify()
            for task in self._adding.values():
                task.cancel()
            await asyncio.gather(*self._adding.values(), return_exceptions=True)

    async def reconcile(self, candidates: set[str], full: bool = True) -> None:
        """Add the databases among `candidates` not followed yet; with `full`, `candidates` is every
        database there is, and the followed ones missing from it are removed."""
        for path in sorted(candidates - self.known - self._adding.keys()):
            self._adding[path] = asyncio.create_task(self._add(path))
        gone = self.known - candidates if full else set()
        if gone:
            await asyncio.gather(*(self._remove(p) for p in sorted(gone)))

    async def _add(self, path: str) -> None:
        try:
            if self.store.find(path) is not None:
                log.warning("%s: found under %s but already replicated; left as it is", path, self.source.root)
                return
            await self.store.add(self.make_spec(self.source.config_for(path)))
            self.known.add(path)
            log.info("%s: found under %s; replicating", path, self.source.root)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one bad file must not stop the others
            log.error("%s: cannot replicate: %s", path, exc)
        finally:
            self._adding.pop(path, None)

    async def _remove(self, path: str) -> None:
        self.known.discard(path)
        try:
            await self.store.remove(path, REMOVE_TIMEOUT)
        except Exception as exc:
            log.error("%s: stopping replication failed: %s", path, exc)
        log.info("%s: no longer a database under %s; replication stopped", path, self.source.root)

    # -- change detection -----------------------------------------------------------------------

    async def _flush(self) -> None:
        """Look at what the events named (or at everything, on a rescan) and reconcile."""
        self._flush_handle = None
        if self._rescan or self._inotify is None:
            self._rescan = False
            self._pending.clear()
            self._pending_dirs.clear()
            if self._inotify is not None:
                await asyncio.to_thread(self._watch_tree, self.source.root)
            await self.reconcile(set(await asyncio.to_thread(self.source.find)))
            return
        paths, self._pending = self._pending, set()
        dirs, self._pending_dirs = self._pending_dirs, set()
        found = set()
        for d in dirs:
            if os.path.isdir(d):
                await asyncio.to_thread(self._watch_tree, d)
                found |= set(await asyncio.to_thread(self.source.find, d))
        present = {p for p in paths if is_sqlite_database(p)}
        await self.reconcile(found | present, full=False)
        prefixes = tuple(d + os.sep for d in dirs)
        gone = {p for p in self.known if (p in paths or p.startswith(prefixes)) and not os.path.exists(p)}
        await asyncio.gather(*(self._remove(p) for p in sorted(gone)))

    def _start_inotify(self) -> None:
        try:
            from asyncinotify import Inotify
        except ImportError:  # not Linux: the periodic rescan alone
            return
        try:
            self._inotify = Inotify()
        except OSError as exc:  # e.g. fs.inotify.max_user_instances reached
            log.warning("%s: inotify unavailable (%s); rescanning every %gs", self.source.root, exc, RESCAN_SECONDS)
            return
        self._watch_tree(self.source.root)
        asyncio.get_running_loop().add_reader(self._inotify.fd, self._readable)  # type: ignore[attr-defined]

    def _stop_inotify(self) -> None:
        if self._inotify is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._inotify.fd)  # type: ignore[attr-defined]
            self._inotify.close()  # type: ignore[attr-defined]
            self._inotify = None

    def _watch_tree(self, top: str) -> None:
        """One watch per directory under `top` (the kernel ignores a second watch of the same one)."""
        from asyncinotify import Mask

        if self._inotify is None:
            return
        for d in self.source.directories(top):
            try:
                watch = self._inotify.add_watch(d, Mask(WATCH_MASK))  # type: ignore[attr-defined]
            except OSError as exc:
                log.warning("%s: cannot watch (%s); found by the periodic rescan instead", d, exc)
                continue
            self._watches[watch.wd] = d

    def _readable(self) -> None:
        assert self._inotify is not None
        try:
            data = os.read(self._inotify.fd, INOTIFY_READ_SIZE)  # type: ignore[attr-defined]
        except BlockingIOError:
            return
        offset = 0
        while offset + INOTIFY_EVENT.size <= len(data):
            wd, mask, _cookie, length = INOTIFY_EVENT.unpack_from(data, offset)
            offset += INOTIFY_EVENT.size
            name = os.fsdecode(data[offset : offset + length].rstrip(b"\0"))
            offset += length
            self._event(wd, mask, name)

    def _event(self, wd: int, mask: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            self._rescan = True
        elif mask & IN_IGNORED:
            self._watches.pop(wd, None)  # its directory is gone
        elif wd in self._watches and name:
            path = os.path.join(self._watches[wd], name)
            if mask & IN_ISDIR:
                if self.source.entry.recursive and not self.source.skipped_dir(path):
                    self._pending_dirs.add(path)
            elif self.source.wanted_name(name):
                self._pending.add(path)
            else:
                return
        else:
            return
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(DEBOUNCE_SECONDS, self._wake.set)
