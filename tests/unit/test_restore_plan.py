"""agent/restore.py `plan`: Litestream's CalcRestorePlan (LITESTREAM.md §B.3), as a pure function."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from lifeboat.agent.restore import NoBackupError, RestoreError, UnservableTargetError, plan
from lifeboat.agent.storage import FileInfo

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def f(level: int, lo: int, hi: int, t: int | None = None) -> FileInfo:
    """A file whose creation time defaults to its max TXID in seconds after T0."""
    return FileInfo(level, lo, hi, 1000, T0 + timedelta(seconds=hi if t is None else t))


def ids(files: list[FileInfo]) -> list[tuple[int, int, int]]:
    return [(x.level, x.min_txid, x.max_txid) for x in files]


def l0(lo: int, hi: int) -> list[FileInfo]:
    return [f(0, n, n) for n in range(lo, hi + 1)]


def test_l0_chain() -> None:
    assert ids(plan({0: l0(1, 5)})) == [(0, n, n) for n in range(1, 6)]


def test_snapshot_then_tail() -> None:
    levels = {9: [f(9, 1, 4), f(9, 1, 10)], 0: l0(1, 12)}
    assert ids(plan(levels)) == [(9, 1, 10), (0, 11, 11), (0, 12, 12)]


def test_compacted_levels_cover_long_stretches() -> None:
    levels = {0: l0(1, 9), 1: [f(1, 1, 4), f(1, 5, 8)], 2: [f(2, 1, 6)]}
    # largest max first: L1 1-4 (max 4) vs L2 1-6 (max 6) -> L2; then L1 5-8 (overlap allowed); then L0 9
    assert ids(plan(levels)) == [(2, 1, 6), (1, 5, 8), (0, 9, 9)]


def test_ranking_ties() -> None:
    # same range in two levels: the higher level wins
    assert ids(plan({1: [f(1, 1, 4)], 2: [f(2, 1, 4)]})) == [(2, 1, 4)]
    # same max: the smaller min wins, even over a higher level
    assert ids(plan({9: [f(9, 1, 1)], 1: [f(1, 1, 4)], 3: [f(3, 2, 4)]})) == [(9, 1, 1), (1, 1, 4)]
    # same range and level: the earlier creation wins
    a, b = f(1, 1, 4, t=50), f(1, 1, 4, t=40)
    assert plan({1: [a, b]}) == [b]


def test_txid_target() -> None:
    levels = {9: [f(9, 1, 6)], 1: [f(1, 1, 4), f(1, 5, 8)], 0: l0(1, 10)}
    assert ids(plan(levels, txid=3)) == [(0, 1, 1), (0, 2, 2), (0, 3, 3)]
    assert ids(plan(levels, txid=6)) == [(9, 1, 6)]
    assert ids(plan(levels, txid=8)) == [(9, 1, 6), (1, 5, 8)]
    assert ids(plan(levels, txid=10))[-1] == (0, 10, 10)
    with pytest.raises(UnservableTargetError, match="no matching backup files available"):
        plan(levels, txid=11)


def test_txid_target_only_on_file_boundaries() -> None:
    # without L0, a TXID inside a compacted file is not available
    levels = {1: [f(1, 1, 4), f(1, 5, 8)]}
    assert ids(plan(levels, txid=4)) == [(1, 1, 4)]
    with pytest.raises(UnservableTargetError):
        plan(levels, txid=6)


def test_timestamp_target() -> None:
    levels = {9: [f(9, 1, 5, t=5)], 0: l0(1, 8)}
    # snapshots must be strictly earlier than the target; other files may be created at it
    assert ids(plan(levels, timestamp=T0 + timedelta(seconds=5))) == [(0, n, n) for n in range(1, 6)]
    assert ids(plan(levels, timestamp=T0 + timedelta(seconds=5, milliseconds=1))) == [(9, 1, 5)]
    assert ids(plan(levels, timestamp=T0 + timedelta(seconds=7, milliseconds=500))) == [
        (9, 1, 5), (0, 6, 6), (0, 7, 7)]
    with pytest.raises(UnservableTargetError):
        plan(levels, timestamp=T0)


def test_gap_is_an_error_when_untargeted() -> None:
    levels = {0: [*l0(1, 3), *l0(5, 6)]}
    with pytest.raises(RestoreError, match="non-contiguous"):
        plan(levels)
    # a target below the gap is still restorable
    assert ids(plan(levels, txid=3)) == [(0, 1, 1), (0, 2, 2), (0, 3, 3)]


def test_gap_bridged_by_another_level_is_fine() -> None:
    levels = {0: [*l0(1, 3), *l0(6, 7)], 1: [f(1, 1, 6)]}
    assert ids(plan(levels)) == [(1, 1, 6), (0, 7, 7)]


def test_no_start_at_txid_1() -> None:
    with pytest.raises(RestoreError):
        plan({0: l0(5, 7)})
    with pytest.raises(RestoreError):
        plan({1: [f(1, 3, 9)]})


def test_unservable_target_names_the_restorable_range() -> None:
    levels = {9: [f(9, 1, 6, t=60)], 0: l0(2, 10)}
    with pytest.raises(UnservableTargetError) as err:
        plan(levels, txid=11)
    assert str(err.value) == (
        "no matching backup files available for txid 000000000000000b: the replica can restore from txid "
        "0000000000000006 (created 2026-01-01T00:01:00Z) to txid 000000000000000a (created 2026-01-01T00:00:10Z)"
    )
    with pytest.raises(UnservableTargetError, match=r"for timestamp 2026-01-01T00:00:30Z: .* txid 0+6 "):
        plan(levels, timestamp=T0 + timedelta(seconds=30))


def test_empty_replica() -> None:
    with pytest.raises(NoBackupError):
        plan({})
    with pytest.raises(NoBackupError):
        plan({0: []})


def test_stale_files_below_the_snapshot_are_ignored() -> None:
    # retention left old L1 files; the newest snapshot covers them
    levels = {9: [f(9, 1, 20)], 1: [f(1, 1, 4), f(1, 5, 8)], 0: l0(19, 21)}
    assert ids(plan(levels)) == [(9, 1, 20), (0, 21, 21)]
