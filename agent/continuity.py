"""What the agent has proven about how the WAL continues the history in its L0 files, and the
database checksum recorded at a graceful stop that lets the next start prove it again.

The continuity state is one immutable value, replaced whole by each step that proves something:
- `Resume`: the WAL generation with these salts continues the history at this offset.
- `FromFile`: the database file holds exactly the last L0 file's state and nothing can be copied
  into it (our read transaction sits on read mark 0, which every checkpoint's backfill needs
  exclusively): the current WAL generation continues from its first frame, whatever its salts,
  unless it is still `prior`'s generation, which continues at `prior`'s offset.
- `SnapshotRequired`: nothing is proven; the next L0 file is a full snapshot, for `reason`.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fastcrc import crc64

from .ltx import CHECKSUM_FLAG
from .storage.file import fsync_dir

SEAL_NAME = "lifeboat-checksum.json"
_PGNO = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Resume:
    """The WAL generation with these salts continues the history at `offset` (running `checksum`)."""

    salt1: int
    salt2: int
    offset: int
    checksum: tuple[int, int]

    @property
    def salts(self) -> tuple[int, int]:
        return self.salt1, self.salt2

    @property
    def salt_bytes(self) -> bytes:
        """The salts as the WAL header and the wal-index store them."""
        return struct.pack(">II", self.salt1, self.salt2)


@dataclass(frozen=True, slots=True)
class FromFile:
    """The database file is the last L0 file's state and is pinned: any new WAL generation continues."""

    prior: Resume | None = None


@dataclass(frozen=True, slots=True)
class SnapshotRequired:
    """Continuity cannot be proven: the next L0 file is a full snapshot."""

    reason: str


Continuity = Resume | FromFile | SnapshotRequired


def database_checksum(pages: Iterable[tuple[int, bytes]]) -> int:
    """The LTX rolling checksum of a database: the flag bit over the XOR of every page's
    CRC-64/GO-ISO of its big-endian page number and data."""
    chk = 0
    for pgno, data in pages:
        chk ^= crc64.go_iso(data, initial=crc64.go_iso(_PGNO.pack(pgno)))
    return CHECKSUM_FLAG | chk


@dataclass(frozen=True, slots=True)
class Seal:
    """The database's checksum at a graceful stop, tied to the L0 file it equals (by TXID and that
    file's own checksum, so a rewritten history can never match)."""

    txid: int
    file_checksum: int
    page_size: int
    commit: int
    checksum: int

    def write(self, meta_dir: Path) -> None:
        path = meta_dir / SEAL_NAME
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(
                {
                    "txid": self.txid,
                    "file_checksum": f"{self.file_checksum:016x}",
                    "page_size": self.page_size,
                    "commit": self.commit,
                    "checksum": f"{self.checksum:016x}",
                },
                f,
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(meta_dir)

    @classmethod
    def take(cls, meta_dir: Path) -> Seal | None:
        """Read and remove the seal: it describes one stop only, whatever the next start makes of it."""
        path = meta_dir / SEAL_NAME
        try:
            raw = json.loads(path.read_text())
            seal = cls(
                txid=int(raw["txid"]),
                file_checksum=int(raw["file_checksum"], 16),
                page_size=int(raw["page_size"]),
                commit=int(raw["commit"]),
                checksum=int(raw["checksum"], 16),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            seal = None
        path.unlink(missing_ok=True)
        return seal


def ltx_file_checksum(path: Path) -> int:
    """The file checksum in an LTX file's trailer (its last 8 bytes)."""
    with open(path, "rb") as f:
        f.seek(-8, os.SEEK_END)
        return int.from_bytes(f.read(8), "big")
