"""Checks of a replica's shape: levels whose TXID ranges do not chain, and compacted files that do not
read back as written.

Litestream's `validation.interval` and `verify-compaction` check the same level contiguity (each
file's min TXID is the previous file's max + 1; sorted by min TXID); the read-back check is
Lifeboat's own: Litestream does not reread what it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import BinaryIO

from . import ltx
from .storage import FileInfo


@dataclass(frozen=True, slots=True)
class LevelProblem:
    """Two neighbouring files of one level whose TXID ranges do not chain."""

    level: int
    kind: str  # "gap", "overlap" or "unsorted", as Litestream names them
    prev: FileInfo
    curr: FileInfo

    def __str__(self) -> str:
        if self.kind == "gap":
            detail = f"TXIDs {self.prev.max_txid + 1:016x}-{self.curr.min_txid - 1:016x} are missing"
        elif self.kind == "overlap":
            detail = f"both hold TXID {self.curr.min_txid:016x}"
        else:
            detail = "listed out of order"
        return f"level={self.level} type={self.kind}: {self.prev.name} then {self.curr.name}: {detail}"


def level_problems(level: int, files: list[FileInfo]) -> list[LevelProblem]:
    """Every gap, overlap or ordering fault between neighbours in one level's listing."""
    problems = []
    for prev, curr in pairwise(files):
        if curr.min_txid < prev.min_txid:
            problems.append(LevelProblem(level, "unsorted", prev, curr))
        elif curr.min_txid > prev.max_txid + 1:
            problems.append(LevelProblem(level, "gap", prev, curr))
        elif curr.min_txid <= prev.max_txid:
            problems.append(LevelProblem(level, "overlap", prev, curr))
    return problems


def read_back_problems(src: BinaryIO, name: str, written: ltx.Header, size: int, span: tuple[int, int]) -> list[str]:
    """What is wrong with a compacted file read back from the replica.

    `written` is the header of the file that was uploaded, `size` its length, `span` the TXID range
    of the inputs it merged. The file must decode with a valid checksum, have that header, and be
    whole.
    """
    try:
        header = ltx.Decoder(src, name).verify()
    except ltx.LTXError as exc:
        return [f"does not decode: {exc}"]
    problems = []
    if (header.min_txid, header.max_txid) != span:
        problems.append(
            f"TXID range {header.min_txid:016x}-{header.max_txid:016x} differs from its inputs'"
            f" {span[0]:016x}-{span[1]:016x}"
        )
    elif header != written:
        problems.append("header differs from the one written")
    if src.tell() != size:
        problems.append(f"{src.tell()} bytes read back, {size} written")
    return problems
