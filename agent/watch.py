"""Change detection for one database: inotify on its directory, and a cheap stat poll as fallback.

Both only say "look now" (a callback); what changed is for the capture to find out from the WAL.
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


def inotify_names(data: bytes, name: bytes) -> bool:
    """Whether raw inotify events concern `name` (or the kernel queue overflowed and any might)."""
    offset = 0
    while offset + INOTIFY_EVENT.size <= len(data):
        _wd, mask, _cookie, length = INOTIFY_EVENT.unpack_from(data, offset)
        offset += INOTIFY_EVENT.size
        if mask & IN_Q_OVERFLOW or data[offset : offset + length].rstrip(b"\0") == name:
            return True
        offset += length
    return False


async def watch_wal(wal_path: str, changed: Callable[[], None], stop: asyncio.Event) -> None:
    """Call `changed` whenever the WAL file is written, created or renamed into place, until `stop`."""
    try:
        from asyncinotify import Inotify, Mask
    except ImportError:  # not Linux: the poll alone detects changes
        return
    wal_name = os.fsencode(os.path.basename(wal_path))
    loop = asyncio.get_running_loop()
    with Inotify() as inotify:
        inotify.add_watch(os.path.dirname(wal_path), Mask.MODIFY | Mask.CREATE | Mask.MOVED_TO)

        # One reader callback on the raw descriptor: asyncinotify's iterator re-registers the
        # descriptor and builds an Event object per event, a fifth of the agent's CPU while a
        # writer streams frames into the WAL.
        def readable() -> None:
            try:
                data = os.read(inotify.fd, INOTIFY_READ_SIZE)
            except BlockingIOError:
                return
            if inotify_names(data, wal_name):
                changed()

        loop.add_reader(inotify.fd, readable)
        try:
            await stop.wait()
        finally:
            loop.remove_reader(inotify.fd)


async def poll_wal(
    wal_path: str, interval: float, changed: Callable[[], None], due: Callable[[], bool], stop: asyncio.Event
) -> None:
    """Every `interval`, call `changed` if the WAL's size or mtime moved, or `due()` says to look."""
    last: tuple[int, int] | None = None
    while not stop.is_set():
        await asyncio.sleep(interval)
        try:
            st = os.stat(wal_path)
            cur = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            cur = (0, 0)
        if cur != last or due():
            changed()
        last = cur


class SharedWatcher:
    """One inotify instance for the WALs of many databases: one watch per directory, and each event
    dispatched by file name. A watch per database would exhaust `fs.inotify.max_user_instances`
    (128 by default) long before a thousand databases."""

    def __init__(self) -> None:
        self._inotify: Any = None
        self._unavailable = False
        self._by_dir: dict[str, tuple[Any, dict[bytes, list[Callable[[], None]]]]] = {}
        self._by_wd: dict[int, dict[bytes, list[Callable[[], None]]]] = {}

    async def watch(self, path: str, changed: Callable[[], None], stop: asyncio.Event) -> None:
        """Call `changed` whenever the file at `path` is written, created or renamed into place, until
        `stop`. Without inotify this returns at once: the caller's poll detects changes alone."""
        if not self._start():
            return
        directory, name = os.path.split(path)
        try:
            entry = self._by_dir.get(directory)
            if entry is None:
                from asyncinotify import Mask

                watch = self._inotify.add_watch(directory, Mask.MODIFY | Mask.CREATE | Mask.MOVED_TO)
                entry = self._by_dir[directory] = (watch, {})
                self._by_wd[watch.wd] = entry[1]
        except OSError as exc:  # e.g. fs.inotify.max_user_watches reached: the poll goes on
            log.warning("%s: cannot watch (%s); changes are found by polling", directory, exc)
            return
        callbacks = entry[1].setdefault(os.fsencode(name), [])
        callbacks.append(changed)
        try:
            await stop.wait()
        finally:
            callbacks.remove(changed)
            if not callbacks:
                del entry[1][os.fsencode(name)]
            if not entry[1] and self._by_dir.get(directory) is entry:
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
