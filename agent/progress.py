"""Progress of a restore's downloads: files and bytes done, rate and ETA.

Shown on a terminal as one line redrawn in place, and otherwise (an init container's log, a Job's)
as a plain line at the start and then at most every `LOG_INTERVAL` seconds.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

LOG_INTERVAL = 5.0
REDRAW_INTERVAL = 0.1


@dataclass
class Transfer:
    """How far a set of downloads has come."""

    files_total: int
    bytes_total: int
    files: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)

    def describe(self, now: float) -> str:
        """`3/12 files, 1.2 GiB of 4.5 GiB, 52.3 MiB/s, ETA 1m04s` (no rate or ETA before any byte)."""
        text = f"{self.files}/{self.files_total} files, {_size(self.bytes)} of {_size(self.bytes_total)}"
        elapsed = now - self.started
        if self.bytes and elapsed > 0:
            rate = self.bytes / elapsed
            left = max(self.bytes_total - self.bytes, 0) / rate
            text += f", {_size(rate)}/s, ETA {_duration(left)}"
        return text


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """Report a `Transfer` on `stream`: redrawn in place on a terminal; otherwise as a line every
    `LOG_INTERVAL` seconds once the transfer has lasted that long (a short restore stays silent,
    and its error, if any, stays the only line)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty()
        self.interval = REDRAW_INTERVAL if self.terminal else LOG_INTERVAL
        self._shown: float | None = None
        self._wrote = False
        self._last: Transfer | None = None

    def __call__(self, transfer: Transfer) -> None:
        now = time.monotonic()
        self._last = transfer
        if self._shown is None:
            self._shown = now
            if not self.terminal:
                return
        elif now - self._shown < self.interval:
            return
        self._shown = now
        self._write(transfer, now)

    def _write(self, transfer: Transfer, now: float) -> None:
        line = f"restoring: {transfer.describe(now)}"
        self.stream.write(f"\r{line}\x1b[K" if self.terminal else f"{line}\n")
        self.stream.flush()
        self._wrote = True

    def done(self) -> None:
        """Show the final state where progress was shown, and end a terminal's line."""
        if self._wrote and self._last is not None:
            self._write(self._last, time.monotonic())
            if self.terminal:
                self.stream.write("\n")
                self.stream.flush()
