"""Change detection: one inotify instance for the WALs of every database, one watch per directory.

It only says "look now" (a callback); what changed is for the capture to find out from the WAL. The
store's scheduler polls each WAL's size and mtime as the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("lifeboat.watch")

INOTIFY_EVENT = struct.Struct("=iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
IN_Q_OVERFLOW = 0x4000
INOTIFY_READ_SIZE = 64 * 1024
# While WAL events come back to back, they are read at most about twice per this many seconds: a
# commit waits at most this long to be noticed, far below a capture's own cost.
WAL_EVENTS_GATHER = 0.005


def parse_events(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(watch descriptor, mask, file name) of each raw `struct inotify_event` in `data`."""
    offset = 0
    while offset + INOTIFY_EVENT.size <= len(data):
        wd, mask, _cookie, length = INOTIFY_EVENT.unpack_from(data, offset)
        offset += INOTIFY_EVENT.size
        yield wd, mask, data[offset : offset + length].rstrip(b"\0")
        offset += length


class EventReader:
    """Reads an inotify descriptor on the running loop and hands each event to `handle(wd, mask, name)`.

    A file written in a tight loop (a hot WAL: a write per commit, thousands a second) raises an
    event per write, and read as they come each is a wakeup of the loop for every inotify instance
    watching its directory. So a read that follows the previous one within `gather` seconds leaves
    the descriptor alone for `gather` seconds: meanwhile the kernel merges the file's repeated events
    into one, and the loop wakes at most about twice per `gather`. An event after a quiet spell is
    read at once.
    """

    def __init__(self, fd: int, handle: Callable[[int, int, bytes], None], gather: float) -> None:
        self.fd = fd
        self._handle = handle
        self._gather = gather
        self._last = -math.inf
        self._resume: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._readable)

    def close(self) -> None:
        """Stop reading (the descriptor stays open: its owner closes it)."""
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.fd)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, INOTIFY_READ_SIZE)
        except BlockingIOError:
            return
        now = self._loop.time()
        if now - self._last < self._gather:
            self._loop.remove_reader(self.fd)
            self._resume = self._loop.call_later(self._gather, self._read_again)
        self._last = now
        for wd, mask, name in parse_events(data):
            self._handle(wd, mask, name)

    def _read_again(self) -> None:
        self._resume = None
        self._loop.add_reader(self.fd, self._readable)


class SharedWatcher:
    """One inotify instance for the WALs of many databases: one watch per directory, and each event
    dispatched by file name. A watch per database would exhaust `fs.inotify.max_user_instances`
    (128 by default) long before a thousand databases."""

    def __init__(self) -> None:
        self._inotify: Any = None
        self._reader: EventReader | None = None
        self._unavailable = False
        self._by_dir: dict[str, tuple[Any, dict[bytes, list[Callable[[], None]]]]] = {}
        self._by_wd: dict[int, dict[bytes, list[Callable[[], None]]]] = {}

    def add(self, path: str, changed: Callable[[], None]) -> None:
        """Call `changed` whenever the file at `path` is written, created or renamed into place, until
        `remove`. Without inotify (or a watch) nothing is called: the caller's poll detects changes."""
        if not self._start():
            return
        directory, name = os.path.split(path)
        entry = self._by_dir.get(directory)
        if entry is None:
            from asyncinotify import Mask

            try:
                watch = self._inotify.add_watch(directory, Mask.MODIFY | Mask.CREATE | Mask.MOVED_TO)
            except OSError as exc:  # e.g. fs.inotify.max_user_watches reached: the poll goes on
                log.warning("%s: cannot watch (%s); changes are found by polling", directory, exc)
                return
            entry = self._by_dir[directory] = (watch, {})
            self._by_wd[watch.wd] = entry[1]
        entry[1].setdefault(os.fsencode(name), []).append(changed)

    def remove(self, path: str, changed: Callable[[], None]) -> None:
        """Undo `add`; the directory's watch goes with its last file."""
        directory, name = os.path.split(path)
        entry = self._by_dir.get(directory)
        callbacks = entry[1].get(os.fsencode(name)) if entry is not None else None
        if entry is None or callbacks is None or changed not in callbacks:
            return
        callbacks.remove(changed)
        if not callbacks:
            del entry[1][os.fsencode(name)]
        if not entry[1]:
            del self._by_dir[directory]
            self._by_wd.pop(entry[0].wd, None)
            with contextlib.suppress(OSError, ValueError):
                self._inotify.rm_watch(entry[0])

    def close(self) -> None:
        """Release the inotify instance (the watches end with it)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._by_dir.clear()
        self._by_wd.clear()

    def _start(self) -> bool:
        if self._inotify is not None:
            return True
        if self._unavailable:
            return False
        try:
            from asyncinotify import Inotify

            self._inotify = Inotify()
        except (ImportError, OSError) as exc:  # not Linux, or no instance left: the poll alone
            self._unavailable = True
            log.warning("inotify unavailable (%s); changes are found by polling", exc)
            return False
        self._reader = EventReader(self._inotify.fd, self._event, WAL_EVENTS_GATHER)
        return True

    def _event(self, wd: int, mask: int, name: bytes) -> None:
        if mask & IN_Q_OVERFLOW:  # any of them may have changed
            for names in self._by_wd.values():
                for callbacks in names.values():
                    for cb in callbacks:
                        cb()
            return
        for cb in self._by_wd.get(wd, {}).get(name, ()):
            cb()
