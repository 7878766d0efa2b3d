"""agent/sqlite.py: WAL header and frame parsing in both byte orders, torn and stale frames, checksums."""

from __future__ import annotations

import os
import random
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from lifeboat.agent import sqlite as sq


def make_wal(
    page_size: int,
    frames: list[tuple[int, int, bytes]],
    *,
    big_endian: bool = False,
    salts: tuple[int, int] = (0x11223344, 0x55667788),
    frame_salts: dict[int, tuple[int, int]] | None = None,
) -> bytes:
    """A WAL built by hand with `wal_checksum`: header, then (pgno, commit, page) frames.

    `frame_salts` overrides the salts written into frame i (its checksum still chains correctly).
    """
    magic = sq.WAL_MAGIC_BE if big_endian else sq.WAL_MAGIC_LE
    head = struct.pack(">6I", magic, sq.WAL_VERSION, page_size, 0, *salts)
    chk = sq.wal_checksum(head, big_endian, (0, 0))
    out = bytearray(head + struct.pack(">2I", *chk))
    for i, (pgno, commit, page) in enumerate(frames):
        assert len(page) == page_size
        fh = struct.pack(">2I", pgno, commit)
        chk = sq.wal_checksum(fh + page, big_endian, chk)
        s1, s2 = (frame_salts or {}).get(i, salts)
        out += fh + struct.pack(">4I", s1, s2, *chk) + page
    return bytes(out)


def pages(n: int, page_size: int, seed: int = 0) -> list[bytes]:
    rnd = random.Random(seed)
    return [rnd.randbytes(page_size) for _ in range(n)]


def scan(wal: bytes) -> tuple[sq.WalHeader, list[sq.WalFrame]]:
    hdr = sq.parse_wal_header(wal)
    assert hdr is not None
    return hdr, sq.scan_frames(wal[32:], 32, hdr, hdr.checksum)


@pytest.mark.parametrize("big_endian", [False, True])
def test_both_byte_orders(big_endian: bool) -> None:
    ps = 512
    p = pages(3, ps)
    wal = make_wal(ps, [(1, 0, p[0]), (2, 2, p[1]), (1, 2, p[2])], big_endian=big_endian)
    assert struct.unpack(">I", wal[:4])[0] == (0x377F0683 if big_endian else 0x377F0682)
    hdr, frames = scan(wal)
    assert hdr.big_endian is big_endian
    assert (hdr.page_size, hdr.salt1, hdr.salt2) == (ps, 0x11223344, 0x55667788)
    assert [(f.pgno, f.commit, f.offset) for f in frames] == [(1, 0, 32), (2, 2, 32 + 536), (1, 2, 32 + 2 * 536)]
    # the other byte order's checksum does not verify
    flipped = bytearray(wal)
    flipped[3] ^= 1  # 0x82 <-> 0x83
    assert sq.parse_wal_header(bytes(flipped)) is None


def test_big_endian_checksum_by_hand() -> None:
    # one 8-byte unit: s0 = w0 + 0 + 0, s1 = w1 + s0 (words read big-endian for magic ...83)
    data = bytes.fromhex("0000000100000002")
    assert sq.wal_checksum(data, True, (0, 0)) == (1, 3)
    assert sq.wal_checksum(data, False, (0, 0)) == (0x01000000, 0x03000000)
    assert sq.wal_checksum(data, True, (5, 7)) == (13, 22)


def test_bad_header() -> None:
    wal = make_wal(512, [])
    assert sq.parse_wal_header(wal[:31]) is None
    assert sq.parse_wal_header(b"") is None
    bad = bytearray(wal)
    bad[20] ^= 1  # salt2 changed: header checksum fails
    assert sq.parse_wal_header(bytes(bad)) is None
    bad = bytearray(wal)
    bad[4:8] = struct.pack(">I", 3007001)
    assert sq.parse_wal_header(bytes(bad)) is None


@pytest.mark.parametrize("big_endian", [False, True])
def test_torn_frame_at_end_stops_there(big_endian: bool) -> None:
    ps = 1024
    p = pages(4, ps, 1)
    wal = make_wal(ps, [(1, 0, p[0]), (2, 2, p[1]), (3, 0, p[2]), (4, 4, p[3])], big_endian=big_endian)
    fs = ps + 24
    # partially written last frame
    _, frames = scan(wal[: len(wal) - 100])
    assert [f.pgno for f in frames] == [1, 2, 3]
    # a complete-length last frame whose page did not all reach the disk
    torn = bytearray(wal)
    torn[-10:] = bytes(10)
    _, frames = scan(bytes(torn))
    assert [f.pgno for f in frames] == [1, 2, 3]
    # a bad frame in the middle hides everything after it
    torn = bytearray(wal)
    torn[32 + fs + 24 + 5] ^= 0xFF
    _, frames = scan(bytes(torn))
    assert [f.pgno for f in frames] == [1]


def test_salt_change_stops_there() -> None:
    ps = 512
    p = pages(4, ps, 2)
    wal = make_wal(ps, [(1, 1, p[0]), (2, 2, p[1]), (3, 3, p[2]), (4, 4, p[3])], frame_salts={2: (1, 2)})
    _, frames = scan(wal)
    assert [f.pgno for f in frames] == [1, 2]


def test_stale_frames_from_a_previous_wal_generation() -> None:
    # After a WAL restart, old frames past the new end still sit in the file with the old salts.
    ps = 512
    p = pages(4, ps, 3)
    old = make_wal(ps, [(1, 0, p[0]), (2, 2, p[1]), (3, 3, p[2]), (4, 4, p[3])], salts=(10, 20))
    new = make_wal(ps, [(5, 5, p[3])], salts=(11, 99))
    wal = new + old[len(new):]
    _, frames = scan(wal)
    assert [(f.pgno, f.commit) for f in frames] == [(5, 5)]


def test_zero_pgno_frame_is_invalid() -> None:
    ps = 512
    p = pages(2, ps, 4)
    _, frames = scan(make_wal(ps, [(1, 1, p[0]), (0, 2, p[1])]))
    assert [f.pgno for f in frames] == [1]


def loop_checksums(data: bytes, page_size: int, big_endian: bool, seed: tuple[int, int]) -> list[tuple[int, int]]:
    """The running checksum after each frame, word by word: what SQLite computes."""
    fs = page_size + 24
    want = []
    s = seed
    for i in range(len(data) // fs):
        frame = data[i * fs : (i + 1) * fs]
        s = sq.wal_checksum(frame[:8] + frame[24:], big_endian, s)
        want.append(s)
    return want


IMPLEMENTATIONS = {"python": sq._frame_checksums_python, "numpy": sq._frame_checksums_numpy}


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("page_size", [512, 1024, 2048, 4096, 8192, 65536])
@pytest.mark.parametrize("big_endian", [False, True])
def test_frame_checksums_equal_the_loop(impl: str, page_size: int, big_endian: bool) -> None:
    rnd = random.Random(page_size * 2 + big_endian)
    fs = page_size + 24
    # 1 to 40 frames: the Python path cuts frames into more lanes the fewer frames a call has
    for count in (1, 2, 7) if page_size == 65536 else (1, 2, 7, 40):
        data = rnd.randbytes(count * fs)
        seed = (rnd.getrandbits(32), rnd.getrandbits(32))
        assert IMPLEMENTATIONS[impl](data, page_size, big_endian, seed, count) == loop_checksums(
            data, page_size, big_endian, seed
        ), count


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_frame_checksums_of_all_ones_words(impl: str) -> None:
    """The largest words make the largest intermediate sums: the Python path's 64-bit lanes must
    not carry into each other."""
    for page_size in (512, 4096, 65536):
        data = b"\xff" * (3 * (page_size + 24))
        seed = (0xFFFFFFFF, 0xFFFFFFFF)
        assert IMPLEMENTATIONS[impl](data, page_size, False, seed, 3) == loop_checksums(data, page_size, False, seed)


def test_frame_checksums_ignore_a_partial_trailing_frame() -> None:
    page_size, fs = 1024, 1048
    data = random.Random(1).randbytes(5 * fs)
    want = loop_checksums(data, page_size, False, (1, 2))
    assert sq.frame_checksums(data + b"\x00" * 100, page_size, False, (1, 2)) == want
    assert sq.frame_checksums(data[: fs - 1], page_size, False, (1, 2)) == []


def test_commits_are_checksummed_without_numpy(tmp_path: Path) -> None:
    """numpy costs ~16 MB of resident memory: scanning ordinary commits, or a whole WAL of a few MiB,
    must not load it. Heavy traffic (over 32 MiB in a minute) does, and gives the same sums."""
    wal = make_wal(4096, [(i + 1, i + 1, p) for i, p in enumerate(pages(30, 4096))])
    (tmp_path / "x.wal").write_bytes(wal)
    code = (
        "import sys; from pathlib import Path; from lifeboat.agent import sqlite as sq; "
        f"wal = Path({str(tmp_path / 'x.wal')!r}).read_bytes(); h = sq.parse_wal_header(wal); "
        "small = sq.scan_frames(wal[32:], 32, h, h.checksum); assert len(small) == 30, len(small); "
        "window = wal[32:] * 33; first = sq.frame_checksums(window, 4096, False, h.checksum); "
        "assert first[:30] == [f.checksum for f in small]; print('numpy' in sys.modules); "
        "sums = [sq.frame_checksums(window, 4096, False, h.checksum) for _ in range(8)]; "
        "assert all(s == first for s in sums); print('numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"], out


def test_real_sqlite_wal(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("CREATE TABLE t (v)")
    for _ in range(20):
        conn.execute("INSERT INTO t VALUES (?)", (os.urandom(500),))
    wal = (tmp_path / "x.db-wal").read_bytes()
    hdr, frames = scan(wal)
    assert hdr.page_size == 4096
    assert len(frames) == (len(wal) - 32) // hdr.frame_size
    assert sum(1 for f in frames if f.commit) == 21
    dbh = sq.read_database_header(str(db))
    assert dbh.is_wal and dbh.page_size == 4096
    conn.close()


def test_database_header() -> None:
    head = bytearray(sq.DB_HEADER_MAGIC + bytes(84))
    head[16:18] = (1).to_bytes(2, "big")  # 65536
    head[18] = head[19] = 2
    head[28:32] = (7).to_bytes(4, "big")
    h = sq.parse_database_header(bytes(head))
    assert (h.page_size, h.page_count, h.is_wal) == (65536, 7, True)
    with pytest.raises(sq.SQLiteFormatError):
        sq.parse_database_header(b"not sqlite" + bytes(90))
    head[16:18] = (1000).to_bytes(2, "big")
    with pytest.raises(sq.SQLiteFormatError):
        sq.parse_database_header(bytes(head))
    assert sq.lock_pgno(4096) == 262145
