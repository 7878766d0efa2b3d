"""agent/ltx.py: the LTX v3 codec against hand-computed vectors (LITESTREAM.md §C)."""

from __future__ import annotations

import io
import struct

import lz4.frame
import pytest
from fastcrc import crc64
from lifeboat.agent import ltx
from lifeboat.agent.sqlite import lock_pgno

# ---- CRC-64/GO-ISO ----------------------------------------------------------------------------


def crc64_iso_reference(data: bytes, crc: int = 0) -> int:
    """Bitwise CRC-64/GO-ISO (Go's hash/crc64 with crc64.ISO): reflected poly 0xD800000000000000."""
    crc ^= 0xFFFFFFFFFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xD800000000000000 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFFFFFFFFFF


def test_crc64_check_value() -> None:
    assert crc64.go_iso(b"123456789") == 0xB90956C775A41001
    assert crc64_iso_reference(b"123456789") == 0xB90956C775A41001


def test_crc64_chains_across_buffers() -> None:
    data = bytes(range(256)) * 3
    whole = crc64.go_iso(data)
    assert crc64.go_iso(data[500:], initial=crc64.go_iso(data[:500])) == whole
    assert crc64_iso_reference(data[500:], crc64_iso_reference(data[:500])) == whole


def test_page_checksum_vector() -> None:
    # §C.10: page checksum of pgno 1 with 512 x '1' (compactor_test.go)
    assert ltx.CHECKSUM_FLAG | crc64.go_iso(struct.pack(">I", 1) + b"1" * 512) == 0xEB1A999231044DDD


# ---- the worked example of §C.10 --------------------------------------------------------------

EXAMPLE_HEX = (
    "4c545831" "00000002" "00000200" "00000001" "0000000000000001" "0000000000000001" "00000000000003e8"
    "0000000000000000" "0000000000000000" "0000000000000000" "00000000" "00000000" "0000000000000000" + "00" * 20
    + "00000001" "0001" "0000000c" "1f310100ffe8503131313131"
    + "000000000000"
    + "0164" "1600" "0000000000000004"
    + "0000000000000000" "f10ef668184cb537"
)
EXAMPLE = bytes.fromhex(EXAMPLE_HEX)
PAGE = b"\x31" * 512
HDR = ltx.Header(page_size=512, commit=1, min_txid=1, max_txid=1, timestamp=1000)


def test_example_file_decodes() -> None:
    dec = ltx.Decoder(io.BytesIO(EXAMPLE), "example.ltx")
    assert dec.header == HDR
    assert list(dec.pages()) == [(1, PAGE)]
    assert dec.page_index == [(1, 100, 22)]


def _hand_file(header: ltx.Header, frames: list[tuple[int, int, bytes, bytes]]) -> bytes:
    """An LTX file assembled by hand: frames are (pgno, flags, stored payload, uncompressed page).

    For flags 1 the payload gets a u32 size prefix; checksum per §C.5. No validity checks, on purpose.
    """
    head = header.pack()
    body = bytearray(head)
    logical = bytearray(head)
    index = bytearray()
    for pgno, flags, payload, page in frames:
        ph = struct.pack(">IH", pgno, flags)
        size_prefix = struct.pack(">I", len(payload)) if flags == 1 else b""
        index += ltx._uvarint(pgno) + ltx._uvarint(len(body)) + ltx._uvarint(6 + len(size_prefix) + len(payload))
        body += ph + size_prefix + payload
        logical += ph + size_prefix + page
    index += b"\x00"
    index += struct.pack(">Q", len(index))
    tail = bytes(6) + bytes(index) + bytes(8)
    body += tail
    logical += tail
    return bytes(body) + struct.pack(">Q", ltx.CHECKSUM_FLAG | crc64_iso_reference(bytes(logical)))


def test_literal_only_variant() -> None:
    literal_block = b"\xf0\xff\xf2" + PAGE  # one sequence: 15 + 255 + 242 = 512 literals
    data = _hand_file(HDR, [(1, 1, literal_block, PAGE)])
    assert struct.unpack(">Q", data[-8:])[0] == 0xC3C28B8DE85514D0
    assert data[-8 - 8 - 8 - 5 : -16 - 8] == bytes.fromhex("01648d0400")
    dec = ltx.Decoder(io.BytesIO(data), "literal.ltx")
    assert list(dec.pages()) == [(1, PAGE)]
    assert dec.page_index == [(1, 100, 6 + 4 + 515)]


# ---- legacy LZ4-frame page encoding (Litestream 0.5.0 - 0.5.15) -------------------------------


def _frame(page: bytes) -> bytes:
    return lz4.frame.compress(
        page, block_size=lz4.frame.BLOCKSIZE_MAX64KB, content_checksum=True, block_linked=False, store_size=False
    )


@pytest.mark.parametrize("page_size", [512, 4096, 65536])
def test_legacy_frame_encoding_decodes(page_size: int) -> None:
    import random

    rnd = random.Random(page_size)
    pages = {
        1: bytes(rnd.getrandbits(8) for _ in range(page_size)),  # incompressible: stored block
        2: b"\x07" * page_size,
        3: (b"abc" * page_size)[:page_size],
    }
    header = ltx.Header(page_size=page_size, commit=3, min_txid=1, max_txid=1, timestamp=5)
    data = _hand_file(header, [(p, 0, _frame(d), d) for p, d in pages.items()])
    dec = ltx.Decoder(io.BytesIO(data), "legacy.ltx")
    assert dict(dec.pages()) == pages
    # the same pages in the block encoding (Litestream 0.5.16+) decode to the same database
    blocks = _hand_file(header, [(p, 1, lz4_block(d), d) for p, d in pages.items()])
    assert dict(ltx.Decoder(io.BytesIO(blocks)).pages()) == pages


def test_encoder_writes_the_frame_encoding_every_05x_reads() -> None:
    # Litestream 0.5.0-0.5.15 (ltx <= v0.5.1) reject page flags other than 0 and read each page as
    # one LZ4 frame, which must carry the content checksum (ltx v0.5.2 reads exactly 8 bytes after
    # the data). Layout and checksum are checked against the hand assembly of section C.
    buf = io.BytesIO()
    checksum = ltx.encode(HDR, [(1, PAGE)], buf)
    data = buf.getvalue()
    assert data == _hand_file(HDR, [(1, 0, _frame(PAGE), PAGE)])
    assert checksum == struct.unpack(">Q", data[-8:])[0]
    assert struct.unpack_from(">IH", data, 100) == (1, 0)
    frame = data[106 : 106 + len(_frame(PAGE))]
    assert frame[:6] == bytes.fromhex("04224d186440")  # magic, FLG (independent blocks, content checksum), BD 64 KiB
    assert frame[-8:-4] == bytes(4)  # end mark, then the xxh32 content checksum
    assert lz4.frame.decompress(frame) == PAGE
    dec = ltx.Decoder(io.BytesIO(data))
    assert list(dec.pages()) == [(1, PAGE)]
    assert dec.page_index == [(1, 100, 6 + len(frame))]


def test_block_encoding_is_the_example_byte_for_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ltx, "_block_encoding", False)  # restored after the test
    ltx.use_block_encoding(True)
    buf = io.BytesIO()
    assert ltx.encode(HDR, [(1, PAGE)], buf) == 0xF10EF668184CB537
    assert buf.getvalue() == EXAMPLE
    ltx.use_block_encoding(False)
    assert struct.unpack_from(">IH", _encoded(HDR, [(1, PAGE)]), 100) == (1, 0)


def _encoded(header: ltx.Header, pages: list[tuple[int, bytes]]) -> bytes:
    buf = io.BytesIO()
    ltx.encode(header, pages, buf)
    return buf.getvalue()


@pytest.mark.parametrize("page_size", [512, 4096, 65536])
def test_frame_encoding_round_trip(page_size: int) -> None:
    import random

    rnd = random.Random(page_size)
    pages = {1: rnd.randbytes(page_size), 2: bytes(page_size), 3: (b"xyz" * page_size)[:page_size]}
    header = ltx.Header(page_size=page_size, commit=3, min_txid=1, max_txid=1, timestamp=5)
    buf = io.BytesIO()
    ltx.encode(header, sorted(pages.items()), buf)
    assert buf.getvalue() == _hand_file(header, [(p, 0, _frame(d), d) for p, d in sorted(pages.items())])
    assert dict(ltx.Decoder(io.BytesIO(buf.getvalue())).pages()) == pages


def test_legacy_frame_without_content_checksum_is_read_exactly() -> None:
    # any frame whose blocks end with the end mark is consumed exactly, not into the next header
    page = b"\x01" * 512
    frame = lz4.frame.compress(page, content_checksum=False, store_size=True, block_linked=False)
    header = ltx.Header(page_size=512, commit=2, min_txid=1, max_txid=1, timestamp=5)
    data = _hand_file(header, [(1, 0, frame, page), (2, 0, _frame(page), page)])
    assert dict(ltx.Decoder(io.BytesIO(data)).pages()) == {1: page, 2: page}


# ---- corruption ------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [33, 111, 120, 130, 140, 147, 150])
def test_flipped_bit_is_a_checksum_error(offset: int) -> None:
    literal = _hand_file(HDR, [(1, 1, b"\xf0\xff\xf2" + PAGE, PAGE)])
    data = bytearray(literal)
    data[offset] ^= 0x04
    with pytest.raises(ltx.LTXError) as exc:
        ltx.Decoder(io.BytesIO(bytes(data)), "bad.ltx").verify()
    assert "bad.ltx" in str(exc.value)


def test_flipped_bit_in_compressed_example() -> None:
    # Every flip is an error, except in bits LZ4 ignores (the match nibble of the last, literal-only
    # token): those decode to the very same page, which the checksum (over uncompressed data) accepts.
    for offset in range(len(EXAMPLE)):
        for bit in range(8):
            data = bytearray(EXAMPLE)
            data[offset] ^= 1 << bit
            try:
                pages = list(ltx.Decoder(io.BytesIO(bytes(data)), "bad.ltx").pages())
            except ltx.LTXError:
                continue
            assert pages == [(1, PAGE)] and offset == 116 and bit < 4, f"byte {offset} bit {bit} went unnoticed"


def test_checksum_mismatch_message() -> None:
    data = bytearray(EXAMPLE)
    data[-1] ^= 0x01
    with pytest.raises(ltx.LTXError, match=r"bad\.ltx: checksum mismatch"):
        ltx.Decoder(io.BytesIO(bytes(data)), "bad.ltx").verify()


def test_truncation_is_a_clear_error() -> None:
    for n in range(len(EXAMPLE)):
        with pytest.raises(ltx.LTXError) as exc:
            ltx.Decoder(io.BytesIO(EXAMPLE[:n]), "cut.ltx").verify()
        assert "cut.ltx" in str(exc.value), f"cut at {n}: {exc.value}"
        assert n < 100 or "truncated" in str(exc.value), f"cut at {n}: {exc.value}"


def test_trailing_bytes_rejected() -> None:
    with pytest.raises(ltx.LTXError):
        ltx.Decoder(io.BytesIO(EXAMPLE + b"\x00"), "long.ltx").verify()


@pytest.mark.parametrize(
    ("field", "value"),
    [("flags", 0x1), ("page_size", 1000), ("min_txid", 0), ("max_txid", 0), ("pre_apply_checksum", 5),
     ("wal_size", 10), ("commit", 0)],
)
def test_invalid_header_rejected(field: str, value: int) -> None:
    from dataclasses import replace

    bad = replace(HDR, **{field: value})
    with pytest.raises(ltx.LTXError):
        ltx.Header.unpack(bad.pack())


def test_not_an_ltx_file() -> None:
    with pytest.raises(ltx.LTXError, match="magic"):
        ltx.Decoder(io.BytesIO(b"SQLite format 3\x00" + bytes(200)), "x.ltx")


# ---- page rules ------------------------------------------------------------------------------


def test_lock_page_rejected_by_encoder_and_decoder() -> None:
    ps = 512
    lock = lock_pgno(ps)
    assert lock == 0x40000000 // 512 + 1
    header = ltx.Header(page_size=ps, commit=lock + 1, min_txid=2, max_txid=2, timestamp=1)
    enc = ltx.Encoder(io.BytesIO(), header)
    enc.write_page(lock - 1, bytes(ps))
    with pytest.raises(ltx.LTXError, match="lock page"):
        enc.write_page(lock, bytes(ps))
    enc.write_page(lock + 1, bytes(ps))  # the page after it is fine
    page = bytes(ps)
    data = _hand_file(header, [(lock, 1, lz4_block(page), page)])
    with pytest.raises(ltx.LTXError, match="invalid page number"):
        ltx.Decoder(io.BytesIO(data), "lock.ltx").verify()


def lz4_block(page: bytes) -> bytes:
    import lz4.block

    return lz4.block.compress(page, store_size=False)


def test_pages_out_of_order_or_beyond_commit() -> None:
    header = ltx.Header(page_size=512, commit=3, min_txid=2, max_txid=2, timestamp=1)
    enc = ltx.Encoder(io.BytesIO(), header)
    enc.write_page(2, bytes(512))
    with pytest.raises(ltx.LTXError):
        enc.write_page(2, bytes(512))
    with pytest.raises(ltx.LTXError):
        enc.write_page(4, bytes(512))
    page = bytes(512)
    for frames in ([(2, page), (1, page)], [(4, page)]):
        data = _hand_file(header, [(p, 1, lz4_block(d), d) for p, d in frames])
        with pytest.raises(ltx.LTXError):
            ltx.Decoder(io.BytesIO(data)).verify()


def test_snapshot_must_be_complete() -> None:
    header = ltx.Header(page_size=512, commit=3, min_txid=1, max_txid=1, timestamp=1)
    enc = ltx.Encoder(io.BytesIO(), header)
    enc.write_page(1, bytes(512))
    with pytest.raises(ltx.LTXError):
        enc.write_page(3, bytes(512))


# ---- compaction ------------------------------------------------------------------------------


def _file(min_txid: int, max_txid: int, commit: int, ts: int, pages: dict[int, bytes]) -> ltx.Decoder:
    buf = io.BytesIO()
    header = ltx.Header(page_size=512, commit=commit, min_txid=min_txid, max_txid=max_txid, timestamp=ts,
                        wal_offset=32, wal_size=100, wal_salt1=7, wal_salt2=8)
    ltx.encode(header, sorted(pages.items()), buf)
    return ltx.Decoder(io.BytesIO(buf.getvalue()), f"{min_txid}-{max_txid}")


def pg(b: int) -> bytes:
    return bytes([b]) * 512


def test_compaction_newest_wins_beyond_commit_dropped_last_timestamp() -> None:
    a = _file(1, 1, 3, 100, {1: pg(1), 2: pg(2), 3: pg(3)})
    b = _file(2, 2, 3, 200, {2: pg(22), 3: pg(33)})
    c = _file(3, 4, 2, 300, {1: pg(11)})  # the database shrank to 2 pages
    out = io.BytesIO()
    header = ltx.compact([a, b, c], out)
    assert (header.min_txid, header.max_txid, header.commit, header.timestamp) == (1, 4, 2, 300)
    assert (header.wal_offset, header.wal_size, header.wal_salt1, header.wal_salt2) == (0, 0, 0, 0)
    dec = ltx.Decoder(io.BytesIO(out.getvalue()), "compacted")
    assert dec.header == header
    assert dict(dec.pages()) == {1: pg(11), 2: pg(22)}


def test_compaction_overlap_allowed_gap_rejected() -> None:
    out = io.BytesIO()
    header = ltx.compact([_file(1, 3, 1, 1, {1: pg(1)}), _file(2, 5, 1, 2, {1: pg(5)})], out)
    assert (header.min_txid, header.max_txid) == (1, 5)
    assert dict(ltx.Decoder(io.BytesIO(out.getvalue())).pages()) == {1: pg(5)}
    with pytest.raises(ltx.LTXError, match="non-contiguous"):
        ltx.compact([_file(1, 1, 1, 1, {1: pg(1)}), _file(3, 3, 1, 2, {1: pg(3)})], io.BytesIO())
    with pytest.raises(ltx.LTXError, match="non-contiguous"):
        ltx.compact([_file(1, 3, 1, 1, {1: pg(1)}), _file(2, 3, 1, 2, {1: pg(3)})], io.BytesIO())


def test_compaction_verifies_inputs() -> None:
    good = _file(1, 1, 1, 1, {1: pg(1)})
    buf = io.BytesIO()
    ltx.encode(ltx.Header(page_size=512, commit=1, min_txid=2, max_txid=2, timestamp=2), [(1, pg(2))], buf)
    data = bytearray(buf.getvalue())
    data[-1] ^= 1
    with pytest.raises(ltx.LTXError, match="checksum"):
        ltx.compact([good, ltx.Decoder(io.BytesIO(bytes(data)), "2-2")], io.BytesIO())


def _written(block: bool, min_txid: int, pages: dict[int, bytes], commit: int = 0) -> bytes:
    ltx.use_block_encoding(block)
    try:
        buf = io.BytesIO()
        header = ltx.Header(page_size=512, commit=commit or max(pages), min_txid=min_txid, max_txid=min_txid,
                            timestamp=min_txid)
        ltx.encode(header, sorted(pages.items()), buf)
        return buf.getvalue()
    finally:
        ltx.use_block_encoding(False)


def _stored_frames(data: bytes) -> dict[int, bytes | None]:
    return {pgno: stored for pgno, _, stored in ltx.Decoder(io.BytesIO(data)).frames()}


@pytest.mark.parametrize("block", [False, True])
def test_compaction_copies_frames_in_its_own_encoding(block: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # A compaction's pages are already compressed in its inputs: copying their frames costs no
    # compression, and the output is byte for byte what compressing again would have written.
    older = _written(block, 1, {1: pg(1), 2: pg(2), 3: bytes(range(256)) * 2})
    newer = _written(block, 2, {2: pg(22)}, commit=3)
    expected = io.BytesIO()
    ltx.use_block_encoding(block)
    try:
        ltx.compact([ltx.Decoder(io.BytesIO(older)), ltx.Decoder(io.BytesIO(newer))], expected)

        def no_compression(*_args: object, **_kwargs: object) -> bytes:
            raise AssertionError("a page was compressed again")

        monkeypatch.setattr(ltx.lz4.frame, "compress", no_compression)
        monkeypatch.setattr(ltx.lz4.block, "compress", no_compression)
        out = io.BytesIO()
        ltx.compact([ltx.Decoder(io.BytesIO(older)), ltx.Decoder(io.BytesIO(newer))], out)
    finally:
        ltx.use_block_encoding(False)
    assert out.getvalue() == expected.getvalue()
    frames = _stored_frames(out.getvalue())
    assert frames == {1: _stored_frames(older)[1], 2: _stored_frames(newer)[2], 3: _stored_frames(older)[3]}
    assert dict(ltx.Decoder(io.BytesIO(out.getvalue())).pages()) == {1: pg(1), 2: pg(22), 3: bytes(range(256)) * 2}


def test_compaction_re_encodes_pages_of_the_other_encoding() -> None:
    # Inputs written as LZ4 blocks, output as LZ4 frames (and the reverse): pages are compressed anew.
    blocks = _written(True, 1, {1: pg(1), 2: pg(2)})
    frames = _written(False, 2, {2: pg(22)})
    for block in (False, True):
        ltx.use_block_encoding(block)
        try:
            out = io.BytesIO()
            ltx.compact([ltx.Decoder(io.BytesIO(blocks)), ltx.Decoder(io.BytesIO(frames))], out)
        finally:
            ltx.use_block_encoding(False)
        flags = {ltx._PAGE_HEADER.unpack_from(s)[1] for s in _stored_frames(out.getvalue()).values() if s}
        assert flags == {ltx.PAGE_FLAG_SIZE if block else 0}
        assert dict(ltx.Decoder(io.BytesIO(out.getvalue())).pages()) == {1: pg(1), 2: pg(22)}


def test_encoder_copies_no_frame_of_another_page() -> None:
    stored = _stored_frames(_written(False, 1, {1: pg(1), 2: pg(2)}))
    buf = io.BytesIO()
    enc = ltx.Encoder(buf, ltx.Header(page_size=512, commit=2, min_txid=1, max_txid=1, timestamp=1))
    enc.write_page(1, pg(1), stored[2])  # page 2's frame offered for page 1: compressed anew
    enc.write_page(2, pg(2), stored[2])
    enc.close()
    assert dict(ltx.Decoder(io.BytesIO(buf.getvalue())).pages()) == {1: pg(1), 2: pg(2)}
