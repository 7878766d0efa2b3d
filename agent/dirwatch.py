"""Directory replication (`dir:`, `pattern:`, `recursive:`, `watch:`, `meta-dir:`).

Every SQLite database under the directory (matched by `pattern` on its file name and recognised by
its header) is replicated to `<replica path>/<path relative to the directory>`, as Litestream lays
it out, so `litestream restore` of `<replica URL>/<relative path>` restores it. With `watch`, one
inotify instance with one watch per directory (never per file) reports new and removed databases
while the agent runs; a periodic rescan is the fallback where inotify is missing or overflows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from collections.abc import Callable

from .config_model import DBConfig
from .dirsource import DirectorySource, is_sqlite_database
from .fdlimit import is_out_of_descriptors
from .store import DatabaseSpec, Store
from .watch import EventReader

log = logging.getLogger("lifeboat.dir")

DEBOUNCE_SECONDS = 0.25  # as Litestream: a burst of events about one file is looked at once
RESCAN_SECONDS = 30.0  # the safety net under inotify; the only detector without it
REMOVE_TIMEOUT = 10.0  # final sync of a database whose file went away
# Events are looked at DEBOUNCE_SECONDS after the first: reading them in bursts costs nothing, and
# spares the loop a wakeup per WAL write (the tree's directories hold the WALs too).
EVENTS_GATHER = 0.05

# inotify(7) event bits
IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x2, 0x8, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_Q_OVERFLOW, IN_IGNORED, IN_ISDIR = 0x100, 0x200, 0x4000, 0x8000, 0x40000000
WATCH_MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE


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
        self._reader: EventReader | None = None

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
            if is_out_of_descriptors(exc):
                soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                log.error("%s: cannot replicate: out of file descriptors (open file limit %d, a few per "
                          "database): raise the nofile limit", path, soft)
            else:
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
        self._reader = EventReader(self._inotify.fd, self._raw_event, EVENTS_GATHER)  # type: ignore[attr-defined]

    def _stop_inotify(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._inotify is not None:
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

    def _raw_event(self, wd: int, mask: int, name: bytes) -> None:
        self._event(wd, mask, os.fsdecode(name))

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
