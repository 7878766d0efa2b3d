"""agent/validation.py: level contiguity (Litestream's gap/overlap/unsorted rules) and the read-back
check of a compacted file."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from lifeboat.agent import ltx
from lifeboat.agent.storage import FileInfo
from lifeboat.agent.validation import level_problems, read_back_problems

T0 = datetime(2026, 1, 2, tzinfo=UTC)


def fi(lo: int, hi: int) -> FileInfo:
    return FileInfo(1, lo, hi, 100, T0)


@pytest.mark.parametrize(
    ("spans", "want"),
    [
        ([], []),
        ([(1, 1)], []),
        ([(1, 5), (6, 9), (10, 10)], []),
        ([(1, 5), (7, 9)], [("gap", "TXIDs 0000000000000006-0000000000000006 are missing")]),
        ([(1, 5), (5, 9)], [("overlap", "both hold TXID 0000000000000005")]),
        ([(6, 9), (1, 5)], [("unsorted", "listed out of order")]),
        ([(1, 2), (4, 4), (4, 6)], [("gap", "0000000000000003"), ("overlap", "0000000000000004")]),
    ],
)
def test_level_problems(spans: list[tuple[int, int]], want: list[tuple[str, str]]) -> None:
    problems = level_problems(1, [fi(lo, hi) for lo, hi in spans])
    assert [p.kind for p in problems] == [k for k, _ in want]
    for p, (_, text) in zip(problems, want, strict=True):
        assert text in str(p)
        assert str(p).startswith("level=1 type=")
        assert p.prev.name in str(p) and p.curr.name in str(p)


def _file(lo: int, hi: int) -> tuple[bytes, ltx.Header]:
    header = ltx.Header(page_size=4096, commit=2, min_txid=lo, max_txid=hi, timestamp=1)
    buf = io.BytesIO()
    ltx.encode(header, [(1, b"\x01" * 4096), (2, b"\x02" * 4096)], buf)
    return buf.getvalue(), header


def test_read_back_accepts_the_file_written() -> None:
    data, header = _file(3, 7)
    assert read_back_problems(io.BytesIO(data), "f", header, len(data), (3, 7)) == []


def test_read_back_reports_a_corrupt_byte() -> None:
    data, header = _file(3, 7)
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    (problem,) = read_back_problems(io.BytesIO(bytes(bad)), "f", header, len(data), (3, 7))
    assert problem.startswith("does not decode: f:")


def test_read_back_reports_a_range_other_than_the_inputs() -> None:
    data, header = _file(3, 7)
    (problem,) = read_back_problems(io.BytesIO(data), "f", header, len(data), (3, 8))
    assert "0000000000000003-0000000000000007 differs from its inputs' 0000000000000003-0000000000000008" in problem


def test_read_back_reports_another_header_or_size() -> None:
    data, header = _file(3, 7)
    other = ltx.Header(page_size=4096, commit=2, min_txid=3, max_txid=7, timestamp=2)
    assert read_back_problems(io.BytesIO(data), "f", other, len(data), (3, 7)) == [
        "header differs from the one written"
    ]
    assert read_back_problems(io.BytesIO(data), "f", header, len(data) + 1, (3, 7)) == [
        f"{len(data)} bytes read back, {len(data) + 1} written"
    ]
