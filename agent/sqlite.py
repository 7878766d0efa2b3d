"""Facts of SQLite's file formats: the database header, the lock page, the WAL and its checksums.

WAL checksums are a linear recurrence over 32-bit words, so a run of frames is verified many words at
a time instead of by a per-word Python loop: with Python integers used as vectors of 64-bit lanes, or,
once the WAL traffic is heavy, with numpy matrix products (see `frame_checksums`).
"""

from __future__ import annotations

import operator
import struct
import sys
import time
from array import array
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import numpy as np

DB_HEADER_MAGIC = b"SQLite format 3\x00"
WAL_MAGIC_LE = 0x377F0682
WAL_MAGIC_BE = 0x377F0683
WAL_VERSION = 3007000
WAL_HEADER_SIZE = 32
WAL_FRAME_HEADER_SIZE = 24
MIN_PAGE_SIZE = 512
MAX_PAGE_SIZE = 65536


class SQLiteFormatError(ValueError):
    """A file is not what SQLite would have written."""


def lock_pgno(page_size: int) -> int:
    """The page that holds the byte-range locks at 1 GiB: never stored, always zero on restore."""
    return 0x40000000 // page_size + 1


def valid_page_size(page_size: int) -> bool:
    return MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE and page_size & (page_size - 1) == 0


@dataclass(frozen=True, slots=True)
class DatabaseHeader:
    """The fields of the 100-byte database header that replication cares about."""

    page_size: int
    page_count: int
    write_version: int
    read_version: int

    @property
    def is_wal(self) -> bool:
        return self.write_version == 2 and self.read_version == 2


def parse_database_header(data: bytes, source: str = "database") -> DatabaseHeader:
    """Parse the first 100 bytes of a database file."""
    if len(data) < 100 or data[:16] != DB_HEADER_MAGIC:
        raise SQLiteFormatError(f"{source}: not a SQLite database (bad header)")
    (raw,) = struct.unpack_from(">H", data, 16)
    page_size = 65536 if raw == 1 else raw
    if not valid_page_size(page_size):
        raise SQLiteFormatError(f"{source}: invalid page size {raw}")
    (page_count,) = struct.unpack_from(">I", data, 28)
    return DatabaseHeader(page_size, page_count, data[18], data[19])


def read_database_header(path: str) -> DatabaseHeader:
    """Read and parse a database file's header."""
    with open(path, "rb") as f:
        return parse_database_header(f.read(100), path)


@dataclass(frozen=True, slots=True)
class WalHeader:
    """The 32-byte WAL header."""

    big_endian: bool
    page_size: int
    checkpoint_seq: int
    salt1: int
    salt2: int
    checksum: tuple[int, int]

    @property
    def frame_size(self) -> int:
        return WAL_FRAME_HEADER_SIZE + self.page_size

    @property
    def salt_bytes(self) -> bytes:
        """The salts as stored in the WAL header (and copied verbatim into the wal-index)."""
        return struct.pack(">II", self.salt1, self.salt2)


def parse_wal_header(data: bytes) -> WalHeader | None:
    """Parse a WAL header; None when it is missing, short or fails its checksum (an empty WAL)."""
    if len(data) < WAL_HEADER_SIZE:
        return None
    magic, version, page_size, seq, salt1, salt2, c1, c2 = struct.unpack_from(">8I", data, 0)
    if magic not in (WAL_MAGIC_LE, WAL_MAGIC_BE) or version != WAL_VERSION:
        return None
    if not valid_page_size(page_size):
        return None
    big_endian = magic == WAL_MAGIC_BE
    if wal_checksum(data[:24], big_endian, (0, 0)) != (c1, c2):
        return None
    return WalHeader(big_endian, page_size, seq, salt1, salt2, (c1, c2))


def wal_checksum(data: bytes, big_endian: bool, seed: tuple[int, int]) -> tuple[int, int]:
    """SQLite's WAL checksum over `data` (a multiple of 8 bytes), chained from `seed`."""
    words = struct.unpack((">" if big_endian else "<") + f"{len(data) // 4}I", data)
    s0, s1 = seed
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _matmul2(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    m = 0xFFFFFFFF
    return (
        (a[0] * b[0] + a[1] * b[2]) & m,
        (a[0] * b[1] + a[1] * b[3]) & m,
        (a[2] * b[0] + a[3] * b[2]) & m,
        (a[2] * b[1] + a[3] * b[3]) & m,
    )


# WAL bytes checksummed in Python within a minute after which numpy is loaded (and used from then on):
# ~0.3 s of CPU in Python, about what importing numpy costs, and numpy takes ~16 MB of resident memory.
# Commits at an ordinary rate, the start-up scan, a snapshot's or the final scan of a large WAL stay
# in Python; a bulk write or a sustained high commit rate crosses it.
NUMPY_AFTER_BYTES_PER_MINUTE = 32 * 1024 * 1024
# The Python path splits a frame into lanes until a call has about this many: more lanes mean fewer
# (but longer) integer operations per 8-byte step, and more lane sums to combine per frame.
_PYTHON_LANES = 32


class _PythonBudget:
    """Bytes checksummed in Python in the current minute: `spend` says whether numpy should take over."""

    def __init__(self) -> None:
        self.window_start = 0.0
        self.spent = 0

    def spend(self, nbytes: int) -> bool:
        now = time.monotonic()
        if now - self.window_start >= 60:
            self.window_start, self.spent = now, 0
        self.spent += nbytes
        return self.spent > NUMPY_AFTER_BYTES_PER_MINUTE


_python_budget = _PythonBudget()


@lru_cache(maxsize=64)
def _step_power(units: int) -> tuple[int, int, int, int]:
    """M**units, M = [[1,1],[1,2]] mod 2**32: what `units` 8-byte steps do to the incoming checksum."""
    result, square = (1, 0, 0, 1), (1, 1, 1, 2)
    while units:
        if units & 1:
            result = _matmul2(result, square)
        square = _matmul2(square, square)
        units >>= 1
    return result


@lru_cache(maxsize=16)
def _lane_weights(span: int, lanes: int) -> tuple[tuple[int, ...], ...]:
    """Weights folding one frame's lane sums, each over `span` steps, into its checksum contribution:
    lane j counts M**(span·(lanes-1-j)). Returned as the four matrix entries, each over the lanes."""
    powers = [_step_power(span * (lanes - 1 - j)) for j in range(lanes)]
    return tuple(tuple(p[i] for p in powers) for i in range(4))


@lru_cache(maxsize=16)
def _low_halves(lanes: int) -> int:
    """The low 32 bits of each of `lanes` 64-bit lanes."""
    return int.from_bytes(b"\xff\xff\xff\xff\x00\x00\x00\x00" * lanes, "little")


def _frame_checksums_python(
    frames: bytes | memoryview, page_size: int, big_endian: bool, seed: tuple[int, int], count: int
) -> list[tuple[int, int]]:
    """`frame_checksums` for a few frames, without numpy.

    Each frame's summed bytes (header 0..8, then the page) are cut into lanes of `span` 8-byte units,
    zero units in front filling the first lane (from a zero state they add nothing). All lanes run
    the recurrence at once as 64-bit fields of two Python integers, one from-bytes gather per step;
    the fields are cut back to 32 bits before a carry can reach the next lane (sums grow at most
    5·2.62**(n-1)-fold in n steps: 16 steps stay below 2**32-fold). Each lane's sum is then weighted
    by its matrix power into its frame's contribution, and frames are chained from `seed`.
    """
    frame_size = WAL_FRAME_HEADER_SIZE + page_size
    units = 1 + page_size // 8
    span = -(-units // max(1, _PYTHON_LANES // count))
    per_frame = -(-units // span)
    pad = bytes(8 * (per_frame * span - units))
    view = memoryview(frames)
    parts: list[bytes | memoryview] = []
    for at in range(0, count * frame_size, frame_size):
        parts += (pad, view[at : at + 8], view[at + 24 : at + frame_size])
    data = b"".join(parts)
    if big_endian:
        words = array("I", data)  # 4-byte items on every platform CPython supports
        words.byteswap()
        data = words.tobytes()
    lanes = count * per_frame
    units_array = array("Q", data)  # 8-byte items: a strided slice of them is the fastest gather
    low = _low_halves(lanes)
    s0 = s1 = 0
    for k in range(span):
        unit = int.from_bytes(units_array[k::span], "little")  # unit k of every lane: w0 low, w1 high
        s0 += (unit & low) + s1
        s1 += ((unit >> 32) & low) + s0
        if k % 16 == 15:
            s0 &= low
            s1 &= low
    lane_format = f"<{2 * lanes}I"
    sums0 = struct.unpack(lane_format, (s0 & low).to_bytes(8 * lanes, "little"))[0::2]
    sums1 = struct.unpack(lane_format, (s1 & low).to_bytes(8 * lanes, "little"))[0::2]
    w00, w01, w10, w11 = _lane_weights(span, per_frame)
    m00, m01, m10, m11 = _step_power(units)
    mul, mask = operator.mul, 0xFFFFFFFF
    out: list[tuple[int, int]] = []
    x, y = seed
    for first in range(0, lanes, per_frame):
        a = sums0[first : first + per_frame]
        b = sums1[first : first + per_frame]
        c0 = sum(map(mul, w00, a)) + sum(map(mul, w01, b))
        c1 = sum(map(mul, w10, a)) + sum(map(mul, w11, b))
        x, y = (m00 * x + m01 * y + c0) & mask, (m10 * x + m11 * y + c1) & mask
        out.append((x, y))
    return out


@lru_cache(maxsize=16)
def _frame_coefficients(units: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Coefficients turning one frame's words into its checksum contribution.

    One 8-byte unit maps the state (s0, s1) to M·s + N·w with M = [[1,1],[1,2]] and N = [[1,0],[1,1]]
    (mod 2**32). After `units` steps: s = M**units · seed + Σ_k M**(units-1-k) · N · w_k.
    Returns a (2·units, 2) uint32 matrix C with [s0, s1] contribution = words @ C, and M**units.
    """
    import numpy as np  # only heavy WAL traffic needs it (see NUMPY_AFTER_BYTES_PER_MINUTE)
    step = (1, 1, 1, 2)
    coeff = np.empty((units, 4), dtype=np.uint64)
    power = (1, 0, 0, 1)  # M**0
    for k in range(units - 1, -1, -1):
        # P_k = M**(units-1-k) · N
        p = _matmul2(power, (1, 0, 1, 1))
        coeff[k] = p
        power = _matmul2(step, power)
    c = np.empty((2 * units, 2), dtype=np.uint32)
    c[0::2, 0] = coeff[:, 0]  # w0 -> s0
    c[1::2, 0] = coeff[:, 1]  # w1 -> s0
    c[0::2, 1] = coeff[:, 2]  # w0 -> s1
    c[1::2, 1] = coeff[:, 3]  # w1 -> s1
    return c, power


def frame_checksums(
    frames: bytes | memoryview, page_size: int, big_endian: bool, seed: tuple[int, int]
) -> list[tuple[int, int]]:
    """The running checksum after each whole frame in `frames`, chained from `seed`.

    Each frame's checksum covers its header bytes 0..8 and its page. Runs are summed in Python until
    NUMPY_AFTER_BYTES_PER_MINUTE is exceeded; from then on numpy does it.
    """
    frame_size = WAL_FRAME_HEADER_SIZE + page_size
    count = len(frames) // frame_size
    if count == 0:
        return []
    if "numpy" not in sys.modules and not _python_budget.spend(count * frame_size):
        return _frame_checksums_python(frames, page_size, big_endian, seed, count)
    return _frame_checksums_numpy(frames, page_size, big_endian, seed, count)


def _frame_checksums_numpy(
    frames: bytes | memoryview, page_size: int, big_endian: bool, seed: tuple[int, int], count: int
) -> list[tuple[int, int]]:
    """`frame_checksums` with numpy: the per-frame sums are linear, so they are computed for all frames
    at once as one matrix product; only the 2x2 chaining runs per frame."""
    import numpy as np

    frame_size = WAL_FRAME_HEADER_SIZE + page_size
    arr = np.frombuffer(frames, dtype=">u4" if big_endian else "<u4", count=count * frame_size // 4)
    arr = arr.reshape(count, frame_size // 4)
    # bytes 0..8 of the header, then the page (skipping salts and stored checksum, bytes 8..24)
    words = np.concatenate((arr[:, 0:2], arr[:, 6:]), axis=1).astype(np.uint32)
    units = words.shape[1] // 2
    coeff, mpow = _frame_coefficients(units)
    contrib = words @ coeff  # uint32 arithmetic wraps mod 2**32, as the checksum does
    out: list[tuple[int, int]] = []
    s0, s1 = seed
    m = 0xFFFFFFFF
    for c0, c1 in contrib.tolist():
        s0, s1 = (mpow[0] * s0 + mpow[1] * s1 + c0) & m, (mpow[2] * s0 + mpow[3] * s1 + c1) & m
        out.append((s0, s1))
    return out


# A WAL frame header: page number, database size after a commit (else 0), salts, running checksum.
_FRAME_HEADER = struct.Struct(">6I")


class WalFrame(NamedTuple):
    """A frame that passed salt and checksum checks (a tuple: scans make one per frame)."""

    offset: int
    pgno: int
    commit: int
    checksum: tuple[int, int]


def scan_frames(
    data: bytes | memoryview,
    base_offset: int,
    header: WalHeader,
    seed: tuple[int, int],
) -> list[WalFrame]:
    """Valid frames of `data` (WAL bytes starting at file offset `base_offset`, frame-aligned).

    Stops at the first frame whose salts differ from the header's or whose checksum fails: SQLite
    treats everything from there on as not part of the log (a torn write or a stale frame).
    """
    fs = header.frame_size
    count = len(data) // fs
    if count == 0:
        return []
    sums = frame_checksums(data[: count * fs], header.page_size, header.big_endian, seed)
    out: list[WalFrame] = []
    for i in range(count):
        pgno, commit, salt1, salt2, c1, c2 = _FRAME_HEADER.unpack_from(data, i * fs)
        if salt1 != header.salt1 or salt2 != header.salt2 or (c1, c2) != sums[i] or pgno == 0:
            break
        out.append(WalFrame(base_offset + i * fs, pgno, commit, (c1, c2)))
    return out


def published_frames(data: bytes | memoryview, base_offset: int, header: WalHeader) -> list[WalFrame]:
    """The frames of `data` (as for :func:`scan_frames`), all below the wal-index's published end.

    SQLite publishes a frame in the wal-index only after the transaction that wrote it committed,
    and a frame of the published generation cannot be overwritten while a reader pins the WAL (the
    agent's read transaction does): recomputing those checksums would prove nothing SQLite's own
    readers do not take on trust, and it was a fifth of the agent's CPU under sustained writes. The
    running checksum is the one each frame's header records. Stops, as scan_frames does, at a
    frame with other salts or page number 0.
    """
    fs = header.frame_size
    salts = (header.salt1, header.salt2)
    out: list[WalFrame] = []
    for i in range(len(data) // fs):
        pgno, commit, salt1, salt2, c1, c2 = _FRAME_HEADER.unpack_from(data, i * fs)
        if (salt1, salt2) != salts or pgno == 0:
            break
        out.append(WalFrame(base_offset + i * fs, pgno, commit, (c1, c2)))
    return out
