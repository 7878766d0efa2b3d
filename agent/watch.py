"""Change detection: one inotify instance for the WALs of every database, one watch per directory.

It only says "look now" (a callback); what changed is for the capture to find out from the WAL. The
store's scheduler polls each WAL's size and mtime as the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import Callable
from typing import Any

log = logging.getLogger("lifeboat.watch")

INOTIFY_EVENT = struct.Struct("=iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
IN_Q_OVERFLOW = 0x4000
INOTIFY_READ_SIZE = 64 * 1024


class SharedWatcher:
    """One inotify instance for the WALs of many databases: one watch per directory, and each event
    dispatched by file name. A watch per database would exhaust `fs.inotify.max_user_instances`
    (128 by default) long before a thousand databases."""

    def __init__(self) -> None:
        self._inotify: Any = None
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
        if self._inotify is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._inotify.fd)
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
        asyncio.get_running_loop().add_reader(self._inotify.fd, self._readable)
        return True

    def _readable(self) -> None:
        try:
            data = os.read(self._inotify.fd, INOTIFY_READ_SIZE)
        except BlockingIOError:
            return
        offset = 0
        while offset + INOTIFY_EVENT.size <= len(data):
            wd, mask, _cookie, length = INOTIFY_EVENT.unpack_from(data, offset)
            offset += INOTIFY_EVENT.size
            name = data[offset : offset + length].rstrip(b"\0")
            offset += length
            if mask & IN_Q_OVERFLOW:  # any of them may have changed
                for names in self._by_wd.values():
                    for callbacks in names.values():
                        for cb in callbacks:
                            cb()
                continue
            for cb in self._by_wd.get(wd, {}).get(name, ()):
                cb()
