"""The process's open-file limit, raised at start the way the Go runtime raises litestream's.

Each replicated database holds a few descriptors for as long as it is followed (its file, its WAL
and wal-index, SQLite's connections), so an agent carrying a thousand databases needs thousands of
them. Containers commonly start processes with a soft limit of 1,024 under a much higher hard
limit; Go programs lift the soft limit to the hard one before `main`, Python programs do not.
"""

from __future__ import annotations

import errno
import logging

log = logging.getLogger("lifeboat")


def raise_open_file_limit() -> int | None:
    """Lift the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in effect (None
    where the platform has no such limit)."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= hard:
        return soft  # an unlimited hard limit is not a number the kernel accepts for the soft one
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open file limit from %d to %d: %s", soft, hard, exc)
        return soft
    return hard


def is_out_of_descriptors(exc: BaseException) -> bool:
    """Whether `exc` is the process (EMFILE) or the system (ENFILE) running out of file descriptors."""
    return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)
