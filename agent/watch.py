"""Change detection for one database: inotify on its directory, and a cheap stat poll as fallback.

Both only say "look now" (a callback); what changed is for the capture to find out from the WAL.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable

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
