"""The LTX v3 file format as Litestream 0.5 writes and reads it.

Layout: a 100-byte header, page frames in ascending pgno order (one LZ4 frame per page, flags 0, which
every Litestream 0.5.x reads; or, after `use_block_encoding(True)`, an LZ4 block with a size prefix,
flags 1, which only 0.5.16+ reads; both are always read), a 6-byte zero page header, the page index
(uvarint triples), its u64 length, and a 16-byte trailer. The file checksum is CRC-64/GO-ISO over the
*logical* stream: header, page headers (+ size prefix), uncompressed pages, zero header, index, and
the post-apply checksum.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import BinaryIO

import lz4.block
import lz4.frame
from fastcrc import crc64

from .sqlite import lock_pgno, valid_page_size

MAGIC = b"LTX1"
HEADER_SIZE = 100
TRAILER_SIZE = 16
PAGE_HEADER_SIZE = 6
HEADER_FLAG_NO_CHECKSUM = 0x2
PAGE_FLAG_SIZE = 0x1
CHECKSUM_FLAG = 1 << 63
LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"
_FRAME_FLG = 0x64  # version 1, independent blocks, content checksum; no block checksums, size or dictionary
# A forged file cannot make a reader allocate more than a page per frame or an index larger than
# the pages it actually carries: sizes are checked against the page size before anything is read.

_HEADER = struct.Struct(">4sIIIQQqQQQIIQ20x")
_PAGE_HEADER = struct.Struct(">IH")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ZERO_PAGE_HEADER = bytes(PAGE_HEADER_SIZE)
# What every file of this process is written in (config key `ltx-page-encoding`). One setting for the
# process, not per file: which Litestream versions must read the replica decides it, and a single
# block-encoded file (an L0, a compaction, a snapshot) already locks out Litestream 0.5.0-0.5.15.
_block_encoding = False
_FRAME_OPTIONS = {
    "block_size": lz4.frame.BLOCKSIZE_MAX64KB,
    "content_checksum": True,
    "block_linked": False,
    "store_size": False,
}


class LTXError(ValueError):
    """An LTX file is malformed, truncated, or fails its checksum."""


@dataclass(frozen=True, slots=True)
class Header:
    """The 100-byte LTX header."""

    page_size: int
    commit: int
    min_txid: int
    max_txid: int
    timestamp: int  # Unix milliseconds
    flags: int = HEADER_FLAG_NO_CHECKSUM
    pre_apply_checksum: int = 0
    wal_offset: int = 0
    wal_size: int = 0
    wal_salt1: int = 0
    wal_salt2: int = 0
    node_id: int = 0

    @property
    def is_snapshot(self) -> bool:
        return self.min_txid == 1

    def pack(self) -> bytes:
        return _HEADER.pack(
            MAGIC,
            self.flags,
            self.page_size,
            self.commit,
            self.min_txid,
            self.max_txid,
            self.timestamp,
            self.pre_apply_checksum,
            self.wal_offset,
            self.wal_size,
            self.wal_salt1,
            self.wal_salt2,
            self.node_id,
        )

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        if len(data) < HEADER_SIZE:
            raise LTXError("truncated header")
        fields = _HEADER.unpack_from(data)
        if fields[0] != MAGIC:
            raise LTXError("bad magic (not an LTX file)")
        hdr = cls(
            flags=fields[1],
            page_size=fields[2],
            commit=fields[3],
            min_txid=fields[4],
            max_txid=fields[5],
            timestamp=fields[6],
            pre_apply_checksum=fields[7],
            wal_offset=fields[8],
            wal_size=fields[9],
            wal_salt1=fields[10],
            wal_salt2=fields[11],
            node_id=fields[12],
        )
        hdr.validate()
        return hdr

    def validate(self) -> None:
        """The rules of ltx's `Header.Validate`."""
        if self.flags & ~HEADER_FLAG_NO_CHECKSUM:
            raise LTXError(f"invalid header flags 0x{self.flags:x}")
        if not valid_page_size(self.page_size):
            raise LTXError(f"invalid page size {self.page_size}")
        if self.min_txid <= 0 or self.max_txid < self.min_txid:
            raise LTXError(f"invalid txid range {self.min_txid}-{self.max_txid}")
        if (self.wal_salt1 or self.wal_salt2) and self.wal_offset == 0:
            raise LTXError("wal offset required when salts are set")
        if self.wal_offset == 0 and self.wal_size != 0:
            raise LTXError("wal size must be zero when wal offset is zero")
        if self.flags & HEADER_FLAG_NO_CHECKSUM and self.pre_apply_checksum:
            raise LTXError("pre-apply checksum must be zero when checksums are disabled")
        if self.commit == 0:
            raise LTXError("commit page count must be non-zero")


_ONE_BYTE_UVARINTS = [bytes((n,)) for n in range(0x80)]


def _uvarint(n: int) -> bytes:
    """Go's `binary.PutUvarint`; three per page of every file written, so the forms up to 256 MiB are unrolled."""
    if n < 0x80:
        return _ONE_BYTE_UVARINTS[n]
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    if n < 0x200000:
        return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, n >> 14))
    if n < 0x10000000:
        return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, ((n >> 14) & 0x7F) | 0x80, n >> 21))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise LTXError("truncated page index")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise LTXError("page index varint overflow")


def _max_block_size(page_size: int) -> int:
    """LZ4's worst-case block size for one page (LZ4_compressBound)."""
    return page_size + page_size // 255 + 16


class Encoder:
    """Writes one LTX file to a binary stream; pages must come in ascending pgno order."""

    def __init__(self, out: BinaryIO, header: Header) -> None:
        header.validate()
        self.block = _block_encoding
        self.out = out
        self.header = header
        self._lock = lock_pgno(header.page_size)
        self._snapshot = header.is_snapshot
        self._last_pgno = 0
        self._index = bytearray()  # encoded as on disk: compact whatever the page count
        head = header.pack()
        out.write(head)
        self._offset = HEADER_SIZE
        self._crc = crc64.go_iso(head)

    def write_page(self, pgno: int, data: bytes | memoryview, stored: bytes | None = None) -> None:
        """Append one page in the process's page encoding.

        `stored` is the page's frame as another file stores it (see :meth:`Decoder.frames`): when it
        is in this file's encoding it is copied as it is, so a compaction does not compress again
        what its inputs already compressed. `data` is still needed, for the file checksum.
        """
        hdr = self.header
        if pgno <= self._last_pgno:
            raise LTXError(f"page {pgno} out of order (after {self._last_pgno})")
        if pgno > hdr.commit:
            raise LTXError(f"page {pgno} beyond commit {hdr.commit}")
        if pgno == self._lock:
            raise LTXError(f"lock page {pgno} cannot be stored")
        if len(data) != hdr.page_size:
            raise LTXError(f"page {pgno}: {len(data)} bytes, expected {hdr.page_size}")
        if self._snapshot and pgno != self._next_snapshot_pgno():
            raise LTXError(f"snapshot must contain every page: got {pgno}, expected {self._next_snapshot_pgno()}")
        if stored is not None and _PAGE_HEADER.unpack_from(stored) == (pgno, PAGE_FLAG_SIZE if self.block else 0):
            # The logical stream the checksum covers: the page header (and size prefix), then the page.
            frame_head = stored[: PAGE_HEADER_SIZE + 4 if self.block else PAGE_HEADER_SIZE]
            self.out.write(stored)
            size = len(stored)
        else:
            if self.block:
                comp = lz4.block.compress(data, store_size=False)
                frame_head = _PAGE_HEADER.pack(pgno, PAGE_FLAG_SIZE) + _U32.pack(len(comp))
            else:
                comp = lz4.frame.compress(data, **_FRAME_OPTIONS)
                frame_head = _PAGE_HEADER.pack(pgno, 0)
            self.out.write(frame_head)
            self.out.write(comp)
            size = len(frame_head) + len(comp)
        self._crc = crc64.go_iso(data, initial=crc64.go_iso(frame_head, initial=self._crc))
        self._index += _uvarint(pgno) + _uvarint(self._offset) + _uvarint(size)
        self._offset += size
        self._last_pgno = pgno

    def _next_snapshot_pgno(self) -> int:
        n = self._last_pgno + 1
        return n + 1 if n == self._lock else n

    def close(self, post_apply_checksum: int = 0) -> int:
        """Write the index and trailer; returns the file checksum."""
        hdr = self.header
        if hdr.is_snapshot:
            expected = hdr.commit - 1 if hdr.commit == self._lock else hdr.commit
            if self._last_pgno not in (hdr.commit, expected) and hdr.commit != 0:
                raise LTXError(f"snapshot ends at page {self._last_pgno}, commit is {hdr.commit}")
        index = bytes(self._index) + b"\x00"
        index += _U64.pack(len(index))
        post = _U64.pack(post_apply_checksum)
        tail = _ZERO_PAGE_HEADER + index + post
        crc = crc64.go_iso(tail, initial=self._crc)
        checksum = CHECKSUM_FLAG | crc
        self.out.write(tail + _U64.pack(checksum))
        return checksum


def use_block_encoding(enabled: bool) -> None:
    """Write pages from now on as size-prefixed LZ4 blocks (flags 1: less CPU, readable only by
    Litestream 0.5.16+), or as one LZ4 frame per page (flags 0, the default: every 0.5.x reads it)."""
    global _block_encoding
    _block_encoding = enabled


def first_page_in_current_encoding(head: bytes) -> bool:
    """Whether a file starting with `head` (header and first page header) holds its pages in the
    encoding this process writes, judged by its first page (a file has one encoding; no page: True)."""
    if len(head) < HEADER_SIZE + PAGE_HEADER_SIZE:
        return False
    pgno, flags = _PAGE_HEADER.unpack_from(head, HEADER_SIZE)
    return pgno == 0 or flags == (PAGE_FLAG_SIZE if _block_encoding else 0)


def encode(header: Header, pages: Iterable[tuple[int, bytes | memoryview]], out: BinaryIO) -> int:
    """Write a whole LTX file; returns its checksum."""
    enc = Encoder(out, header)
    for pgno, data in pages:
        enc.write_page(pgno, data)
    return enc.close()


class Decoder:
    """Reads one LTX file from a binary stream, verifying the checksum when fully consumed."""

    def __init__(self, src: BinaryIO, name: str = "ltx") -> None:
        self.src = src
        self.name = name
        head = self._read(HEADER_SIZE, "header")
        try:
            self.header = Header.unpack(head)
        except LTXError as exc:
            raise LTXError(f"{name}: {exc}") from None
        self._crc = crc64.go_iso(head)
        self._offset = HEADER_SIZE
        # The page index as the file encodes it (3 uvarints per page), not a list of tuples: a
        # 1 GiB database has 262k pages, and Python tuples would cost ~40 MB per open decoder.
        self._index = bytearray()
        self._pages = 0

    def _read(self, n: int, what: str) -> bytes:
        data = self.src.read(n)
        if len(data) != n:
            raise LTXError(f"{self.name}: truncated file (reading {what})")
        return data

    def pages(self) -> Iterator[tuple[int, bytes]]:
        """Yield (pgno, page) in order; after the last page, read and verify index and trailer."""
        for pgno, data, _ in self._frames(False):
            yield pgno, data

    def frames(self) -> Iterator[tuple[int, bytes, bytes | None]]:
        """Like :meth:`pages`, with each page's frame as this file stores it (page header included)
        when it is a single LZ4 block or a frame of the form this encoder writes, else None: what
        :meth:`Encoder.write_page` can copy instead of compressing the page again."""
        return self._frames(True)

    def _frames(self, keep: bool) -> Iterator[tuple[int, bytes, bytes | None]]:
        hdr = self.header
        ps = hdr.page_size
        lock = lock_pgno(ps)
        last = 0
        stored: bytes | None = None
        while True:
            ph = self._read(PAGE_HEADER_SIZE, "page header")
            pgno, flags = _PAGE_HEADER.unpack(ph)
            if pgno == 0:
                if flags:
                    raise LTXError(f"{self.name}: invalid end-of-pages header")
                self._crc = crc64.go_iso(ph, initial=self._crc)
                self._offset += PAGE_HEADER_SIZE
                break
            if pgno <= last or pgno > hdr.commit or pgno == lock:
                raise LTXError(f"{self.name}: invalid page number {pgno} (after {last}, commit {hdr.commit})")
            start = self._offset
            if flags == PAGE_FLAG_SIZE:
                size_bytes = self._read(4, "page size")
                (csize,) = _U32.unpack(size_bytes)
                if csize > _max_block_size(ps):
                    raise LTXError(f"{self.name}: page {pgno} compressed size {csize} too large")
                comp = self._read(csize, f"page {pgno}")
                try:
                    data = lz4.block.decompress(comp, uncompressed_size=ps)
                except lz4.block.LZ4BlockError as exc:
                    raise LTXError(f"{self.name}: page {pgno}: corrupt LZ4 block ({exc})") from None
                self._crc = crc64.go_iso(size_bytes, initial=crc64.go_iso(ph, initial=self._crc))
                self._offset += PAGE_HEADER_SIZE + 4 + csize
                if keep:
                    stored = ph + size_bytes + comp
            elif flags == 0:
                data, frame = self._read_lz4_frame(pgno)
                self._crc = crc64.go_iso(ph, initial=self._crc)
                self._offset += PAGE_HEADER_SIZE + len(frame)
                if keep:
                    stored = ph + frame if frame[4] == _FRAME_FLG else None
            else:
                raise LTXError(f"{self.name}: page {pgno}: invalid page flags 0x{flags:x}")
            if len(data) != ps:
                raise LTXError(f"{self.name}: page {pgno} decompressed to {len(data)} bytes, expected {ps}")
            self._crc = crc64.go_iso(data, initial=self._crc)
            self._index += _uvarint(pgno) + _uvarint(start) + _uvarint(self._offset - start)
            self._pages += 1
            last = pgno
            yield pgno, data, stored
        self._finish()

    @property
    def page_index(self) -> list[tuple[int, int, int]]:
        """(pgno, offset, size) of every page read so far."""
        out: list[tuple[int, int, int]] = []
        pos = 0
        while pos < len(self._index):
            pgno, pos = _read_uvarint(self._index, pos)
            offset, pos = _read_uvarint(self._index, pos)
            size, pos = _read_uvarint(self._index, pos)
            out.append((pgno, offset, size))
        return out

    def _read_lz4_frame(self, pgno: int) -> tuple[bytes, bytes]:
        """Read exactly one LZ4 frame (flags-0 page encoding); returns the page and the frame.

        The frame is walked block by block, so a frame without a content checksum is not read past
        its end. A page fits one LZ4 block (blocks hold at least 64 KiB), which is decompressed with
        the block API, twice as fast as a frame context per page; the content checksum is not
        recomputed, since the file checksum covers the decompressed page. Frames split into several
        blocks by some other writer go through the frame API.
        """
        head = self._read(6, f"page {pgno} frame header")  # magic, FLG, BD
        if head[:4] != LZ4_FRAME_MAGIC:
            raise LTXError(f"{self.name}: page {pgno}: bad LZ4 frame magic")
        flg = head[4]
        if flg == _FRAME_FLG:
            return self._read_own_frame(pgno, head)
        parts = [head]
        if flg & 0x08:  # content size present
            parts.append(self._read(8, "frame content size"))
        if flg & 0x01:  # dictionary ID present
            parts.append(self._read(4, "frame dictionary id"))
        parts.append(self._read(1, "frame header checksum"))
        block_checksum = 4 if flg & 0x10 else 0
        ps = self.header.page_size
        blocks: list[tuple[int, bytes]] = []  # (size field, payload)
        total = 0
        while True:
            raw = self._read(4, "frame block size")
            parts.append(raw)
            (bsize,) = struct.unpack("<I", raw)
            if bsize == 0:
                break
            total += bsize & 0x7FFFFFFF
            if total > 2 * _max_block_size(ps):
                raise LTXError(f"{self.name}: page {pgno}: LZ4 frame too large")
            block = self._read((bsize & 0x7FFFFFFF) + block_checksum, "frame block")
            parts.append(block)
            blocks.append((bsize, block[: len(block) - block_checksum]))
        if flg & 0x04:
            parts.append(self._read(4, "frame content checksum"))
        frame = b"".join(parts)
        try:
            if len(blocks) != 1:
                return lz4.frame.decompress(frame), frame
            bsize, block = blocks[0]
            return (block if bsize & 0x80000000 else lz4.block.decompress(block, uncompressed_size=ps)), frame
        except (lz4.block.LZ4BlockError, RuntimeError) as exc:
            raise LTXError(f"{self.name}: page {pgno}: corrupt LZ4 frame ({exc})") from None

    def _read_own_frame(self, pgno: int, head: bytes) -> tuple[bytes, bytes]:
        """The frame layout this encoder and Litestream write, in three reads: the header checksum
        and block size, the block with the end mark and content checksum."""
        ps = self.header.page_size
        rest = self._read(5, "frame block size")
        (bsize,) = struct.unpack_from("<I", rest, 1)
        csize = bsize & 0x7FFFFFFF
        if csize > _max_block_size(ps):
            raise LTXError(f"{self.name}: page {pgno}: LZ4 frame too large")
        tail = self._read(csize + 8, "frame block")
        if tail[csize : csize + 4] != b"\0\0\0\0":
            raise LTXError(f"{self.name}: page {pgno}: LZ4 frame of several blocks")
        block = tail[:csize]
        try:
            data = block if bsize & 0x80000000 else lz4.block.decompress(block, uncompressed_size=ps)
        except lz4.block.LZ4BlockError as exc:
            raise LTXError(f"{self.name}: page {pgno}: corrupt LZ4 frame ({exc})") from None
        return data, head + rest + tail

    def _finish(self) -> None:
        # Whatever follows the pages is the index (at most three 10-byte varints per page plus the
        # terminator), its u64 size and the trailer: read it in one bounded call.
        bound = 30 * self._pages + 1 + 8 + TRAILER_SIZE
        rest = self.src.read(bound + 1)
        if len(rest) > bound:
            raise LTXError(f"{self.name}: page index too large or trailing bytes")
        # The index must be, byte for byte, the one the pages read describe (as Go's encoder writes
        # varints: minimal), then its terminator, the varint of pgno 0.
        end = len(self._index)
        if len(rest) <= end:
            raise LTXError(f"{self.name}: truncated file (reading the page index)")
        if rest[:end] != self._index or rest[end : end + 1] != b"\x00":
            raise LTXError(f"{self.name}: page index does not match the pages")
        pos = end + 1
        if len(rest) != pos + 8 + TRAILER_SIZE:
            raise LTXError(f"{self.name}: truncated file or trailing bytes after the page index")
        (idx_size,) = _U64.unpack_from(rest, pos)
        if idx_size != pos:
            raise LTXError(f"{self.name}: page index size {idx_size} does not match {pos}")
        crc = crc64.go_iso(rest[: pos + 8 + 8], initial=self._crc)
        (stored,) = _U64.unpack_from(rest, pos + 16)
        if stored != CHECKSUM_FLAG | crc:
            raise LTXError(
                f"{self.name}: checksum mismatch (file says {stored:016x}, content is {CHECKSUM_FLAG | crc:016x})"
            )
        self._crc = crc

    def verify(self) -> Header:
        """Read everything, checking every page and the checksum; returns the header."""
        for _ in self.pages():
            pass
        return self.header


def read_header(src: BinaryIO, name: str = "ltx") -> Header:
    """Parse just the header of an LTX stream."""
    data = src.read(HEADER_SIZE)
    try:
        return Header.unpack(data)
    except LTXError as exc:
        raise LTXError(f"{name}: {exc}") from None


def merge_pages(decoders: list[Decoder], commit: int) -> Iterator[tuple[int, bytes, bytes | None]]:
    """Merge page streams of contiguous files, newest (last) winning; pages beyond `commit` dropped.

    Yields (pgno, page, stored frame or None) as :meth:`Decoder.frames` does. Every input is read to
    its end, so every input's checksum is verified.
    """
    heap: list[tuple[int, int, bytes, bytes | None, Iterator[tuple[int, bytes, bytes | None]]]] = []
    for i, dec in enumerate(decoders):
        it = dec.frames()
        first = next(it, None)
        if first is not None:
            heap.append((first[0], -i, first[1], first[2], it))
    heapq.heapify(heap)
    while heap:
        pgno, neg_i, data, stored, it = heap[0]
        nxt = next(it, None)
        if nxt is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (nxt[0], neg_i, nxt[1], nxt[2], it))
        # drop older versions of the same page
        while heap and heap[0][0] == pgno:
            _, ni, _, _, it2 = heap[0]
            n2 = next(it2, None)
            if n2 is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (n2[0], ni, n2[1], n2[2], it2))
        if pgno <= commit:
            yield pgno, data, stored


def compact(decoders: list[Decoder], out: BinaryIO, flags: int = HEADER_FLAG_NO_CHECKSUM) -> Header:
    """Merge contiguous LTX files into one (ltx's Compactor semantics); returns the output header."""
    if not decoders:
        raise LTXError("nothing to compact")
    first, last = decoders[0].header, decoders[-1].header
    prev_max = first.max_txid
    for dec in decoders[1:]:
        h = dec.header
        if h.page_size != first.page_size:
            raise LTXError(f"{dec.name}: page size {h.page_size} differs from {first.page_size}")
        if not (h.min_txid <= prev_max + 1 and h.max_txid > prev_max):
            raise LTXError(f"{dec.name}: non-contiguous txid range {h.min_txid}-{h.max_txid} after {prev_max}")
        prev_max = h.max_txid
    header = replace(
        Header(
            page_size=first.page_size,
            commit=last.commit,
            min_txid=first.min_txid,
            max_txid=last.max_txid,
            timestamp=last.timestamp,
            flags=flags,
        ),
        pre_apply_checksum=first.pre_apply_checksum if not flags & HEADER_FLAG_NO_CHECKSUM else 0,
    )
    enc = Encoder(out, header)
    for pgno, data, stored in merge_pages(decoders, header.commit):
        enc.write_page(pgno, data, stored)
    enc.close()
    return header
