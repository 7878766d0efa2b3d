"""`PageMap`: page number -> WAL offset of that page's newest frame, in memory that stays small.

A WAL scan remembers, for every page a transaction touched, where its newest frame is. A dict costs
about 100 bytes an entry, so a VACUUM of a 10 GB database (2.6 million pages) would cost some 300 MB.
Past `DENSE_AFTER` entries the map turns into an array indexed by page number: 8 bytes a page of the
database, whatever the transaction.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

DENSE_AFTER = 50_000


class PageMap:
    """A dict while small, a dense array of offsets (0: absent) once large."""

    __slots__ = ("_dense", "_len", "_small")

    def __init__(self) -> None:
        self._small: dict[int, int] = {}
        self._dense: array[int] | None = None
        self._len = 0

    def __len__(self) -> int:
        return len(self._small) if self._dense is None else self._len

    def get(self, pgno: int) -> int | None:
        """The offset of `pgno`'s newest frame, or None."""
        if self._dense is None:
            return self._small.get(pgno)
        off = self._dense[pgno] if pgno < len(self._dense) else 0
        return off or None

    def set(self, pgno: int, offset: int) -> None:
        """Record `offset` (never 0: a frame never starts at the WAL's first byte) for `pgno`."""
        dense = self._dense
        if dense is None:
            self._small[pgno] = offset
            if len(self._small) > DENSE_AFTER:
                self._densify()
            return
        if pgno >= len(dense):
            dense.frombytes(bytes(8 * (pgno + 1 - len(dense) + len(dense) // 2)))
        if not dense[pgno]:
            self._len += 1
        dense[pgno] = offset

    def update(self, other: PageMap) -> None:
        """Take every entry of `other` (newer frames win)."""
        if not len(self):
            self._small, self._dense, self._len = other._small, other._dense, other._len
            other._small, other._dense, other._len = {}, None, 0
            return
        for pgno, off in other.items():
            self.set(pgno, off)

    def clear(self) -> None:
        self._small, self._dense, self._len = {}, None, 0

    def pgnos(self) -> Iterator[int]:
        """Page numbers in ascending order."""
        if self._dense is None:
            yield from sorted(self._small)
            return
        for pgno, off in enumerate(self._dense):
            if off:
                yield pgno

    def items(self) -> Iterator[tuple[int, int]]:
        """(page number, offset) in ascending page order."""
        if self._dense is None:
            for pgno in sorted(self._small):
                yield pgno, self._small[pgno]
            return
        for pgno, off in enumerate(self._dense):
            if off:
                yield pgno, off

    def _densify(self) -> None:
        dense: array[int] = array("q", bytes(8 * (max(self._small) + 1)))
        for pgno, off in self._small.items():
            dense[pgno] = off
        self._len = len(self._small)
        self._dense, self._small = dense, {}
