"""agent/compaction.py: the pure scheduling and retention rules, the Lifecycle against a directory
replica, and the CLI switches that drive it (`replicate -once -force-snapshot -enforce-retention`,
`ltx -level all -json`, `restore -dry-run -json`)."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import assert_same_db, create_db, file_url, lifeboat, litestream, ok, write_batch
from lifeboat.agent import ltx
from lifeboat.agent.compaction import (
    Lifecycle,
    LifecycleSettings,
    contiguous_run,
    l0_files_to_delete,
    level_files_below_floor,
    next_boundary,
    snapshots_to_delete,
)
from lifeboat.agent.restore import plan
from lifeboat.agent.storage import SNAPSHOT_LEVEL, FileInfo
from lifeboat.agent.storage.file import FileReplicaClient

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def fi(level: int, lo: int, hi: int, age: float = 0.0, now: datetime = T0) -> FileInfo:
    """A file of `level` covering lo..hi, created `age` seconds before `now`."""
    return FileInfo(level, lo, hi, 100, now - timedelta(seconds=age))


def spans(files: list[FileInfo]) -> list[tuple[int, int]]:
    return [(f.min_txid, f.max_txid) for f in files]


# ---- next_boundary -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "interval", "want"),
    [
        (10.0, 2.0, 12.0),  # exactly on a boundary: the next one, never now
        (11.999, 2.0, 12.0),
        (12.001, 5.0, 15.0),
        (0.0, 30.0, 30.0),
        (1_767_323_045.5, 3600.0, 1_767_326_400.0),  # next whole UTC hour
    ],
)
def test_next_boundary(now: float, interval: float, want: float) -> None:
    assert next_boundary(now, interval) == want


def test_next_boundary_day_is_utc_midnight() -> None:
    now = datetime(2026, 3, 4, 17, 30, tzinfo=UTC).timestamp()
    got = datetime.fromtimestamp(next_boundary(now, 86400.0), UTC)
    assert got == datetime(2026, 3, 5, tzinfo=UTC)


def test_next_boundary_is_strictly_later_and_aligned() -> None:
    for now in (0.0, 0.5, 1.0, 1234.567, 1e9 + 0.25):
        for interval in (1.0, 2.0, 5.0, 10.0, 15.0):
            b = next_boundary(now, interval)
            assert now < b <= now + interval
            assert b % interval == 0


# ---- contiguous_run ------------------------------------------------------------------------------


def test_contiguous_run_from_start() -> None:
    files = [fi(0, 1, 1), fi(0, 2, 2), fi(0, 3, 5), fi(0, 6, 6)]
    assert spans(contiguous_run(files, 0)) == [(1, 1), (2, 2), (3, 5), (6, 6)]


def test_contiguous_run_continues_above_after() -> None:
    files = [fi(0, 1, 1), fi(0, 2, 2), fi(0, 3, 5), fi(0, 6, 6)]
    assert spans(contiguous_run(files, 2)) == [(3, 5), (6, 6)]
    assert spans(contiguous_run(files, 6)) == []


def test_contiguous_run_accepts_overlap_skips_covered() -> None:
    # 3-5 overlaps a destination that ends at 4: still contiguous (min <= prev + 1, max > prev).
    files = [fi(1, 1, 2), fi(1, 3, 5), fi(1, 6, 8)]
    assert spans(contiguous_run(files, 4)) == [(3, 5), (6, 8)]


def test_contiguous_run_stops_at_gap() -> None:
    files = [fi(0, 1, 1), fi(0, 2, 2), fi(0, 4, 4), fi(0, 5, 5)]
    assert spans(contiguous_run(files, 0)) == [(1, 1), (2, 2)]
    assert spans(contiguous_run(files, 2)) == []  # 4 does not continue 2


def test_contiguous_run_empty_start_takes_first_file() -> None:
    # A fresh level (after = 0) starts at whatever the source level begins with.
    files = [fi(1, 40, 50), fi(1, 51, 60)]
    assert spans(contiguous_run(files, 0)) == [(40, 50), (51, 60)]
    assert contiguous_run([], 0) == []


# ---- snapshots_to_delete -------------------------------------------------------------------------


def test_snapshots_to_delete_keeps_newest_and_window_base() -> None:
    snaps = [fi(9, 1, 10, 100), fi(9, 1, 20, 80), fi(9, 1, 30, 40), fi(9, 1, 40, 20), fi(9, 1, 50, 1)]
    # Window: the last 30 s. Old: created 100, 80, 40 s ago; the newest of those (40 s) is the base.
    doomed = snapshots_to_delete(snaps, T0, 30.0)
    assert spans(doomed) == [(1, 10), (1, 20)]


def test_snapshots_to_delete_nothing_old() -> None:
    snaps = [fi(9, 1, 10, 20), fi(9, 1, 20, 10), fi(9, 1, 30, 0)]
    assert snapshots_to_delete(snaps, T0, 30.0) == []


def test_snapshots_to_delete_one_old_is_the_base() -> None:
    snaps = [fi(9, 1, 10, 100), fi(9, 1, 20, 10)]
    assert snapshots_to_delete(snaps, T0, 30.0) == []


def test_snapshots_to_delete_never_the_newest() -> None:
    # Every snapshot is old: the newest stays (it is the only base), and so does nothing else.
    snaps = [fi(9, 1, 10, 300), fi(9, 1, 20, 200), fi(9, 1, 30, 100)]
    assert spans(snapshots_to_delete(snaps, T0, 30.0)) == [(1, 10), (1, 20)]
    assert snapshots_to_delete(snaps[:1], T0, 30.0) == []
    assert snapshots_to_delete([], T0, 30.0) == []


def test_snapshots_to_delete_unordered_input() -> None:
    snaps = [fi(9, 1, 40, 20), fi(9, 1, 10, 100), fi(9, 1, 30, 40), fi(9, 1, 20, 80)]
    assert sorted(spans(snapshots_to_delete(snaps, T0, 30.0))) == [(1, 10), (1, 20)]


# ---- level_files_below_floor ---------------------------------------------------------------------


def test_level_files_below_floor() -> None:
    files = [fi(1, 1, 10), fi(1, 11, 20), fi(1, 21, 30), fi(1, 31, 40)]
    assert spans(level_files_below_floor(files, 20)) == [(1, 10), (11, 20)]  # max <= floor
    assert spans(level_files_below_floor(files, 25)) == [(1, 10), (11, 20)]  # 21-30 straddles: kept
    assert level_files_below_floor(files, 0) == []


def test_level_files_below_floor_keeps_last_file() -> None:
    files = [fi(2, 1, 10), fi(2, 11, 20)]
    assert spans(level_files_below_floor(files, 100)) == [(1, 10)]
    assert level_files_below_floor(files[:1], 100) == []
    assert level_files_below_floor([], 100) == []


# ---- l0_files_to_delete --------------------------------------------------------------------------


def test_l0_files_to_delete_covered_and_old() -> None:
    l0 = [fi(0, t, t, age) for t, age in [(1, 60), (2, 50), (3, 40), (4, 3), (5, 2), (6, 1)]]
    assert spans(l0_files_to_delete(l0, 6, T0, 5.0)) == [(1, 1), (2, 2), (3, 3)]  # stops at a recent one


def test_l0_files_to_delete_only_what_l1_covers() -> None:
    l0 = [fi(0, t, t, 60 - t) for t in range(1, 8)]
    assert spans(l0_files_to_delete(l0, 3, T0, 5.0)) == [(1, 1), (2, 2), (3, 3)]
    assert l0_files_to_delete(l0, 0, T0, 5.0) == []


def test_l0_files_to_delete_keeps_newest() -> None:
    l0 = [fi(0, t, t, 100) for t in range(1, 4)]
    assert spans(l0_files_to_delete(l0, 3, T0, 5.0)) == [(1, 1), (2, 2)]
    assert l0_files_to_delete(l0[:1], 3, T0, 5.0) == []
    assert l0_files_to_delete([], 3, T0, 5.0) == []


def test_l0_files_to_delete_stops_at_first_recent() -> None:
    # An out-of-order timestamp (a recent file before old ones) ends the scan, like Litestream's.
    l0 = [fi(0, 1, 1, 60), fi(0, 2, 2, 1), fi(0, 3, 3, 60), fi(0, 4, 4, 60)]
    assert spans(l0_files_to_delete(l0, 4, T0, 5.0)) == [(1, 1)]


# ---- retention keeps the window restorable (pure functions + the restore planner) -----------------


def test_retention_keeps_every_point_of_the_window_restorable() -> None:
    """Snapshot every 15 s, L1 every 2 s, retention 30 s: after retention, every T in the window
    plans from a snapshot to an L1 file no more than one L1 interval older than T."""
    now = T0
    start = now - timedelta(seconds=90)
    snaps = []
    l1 = []
    txid = 0
    for k in range(45):  # one L1 file per 2 s, 10 txids each, over 90 s
        created = start + timedelta(seconds=2 * (k + 1))
        l1.append(FileInfo(1, txid + 1, txid + 10, 100, created))
        txid += 10
        if (k + 1) % 8 == 0:  # a snapshot every 16 s at the current txid
            snaps.append(FileInfo(SNAPSHOT_LEVEL, 1, txid, 100, created))
    doomed = snapshots_to_delete(snaps, now, 30.0)
    kept = [s for s in snaps if s not in doomed]
    assert doomed, "the scenario must delete something"
    floor = min(s.max_txid for s in kept)
    l1_kept = [f for f in l1 if f not in level_files_below_floor(l1, floor)]
    assert len(l1_kept) < len(l1)
    for i in range(31):
        ts = now - timedelta(seconds=30 - i)
        chain = plan({SNAPSHOT_LEVEL: kept, 1: l1_kept}, timestamp=ts)
        assert chain[0].level == SNAPSHOT_LEVEL
        last = chain[-1]
        assert last.created_at <= ts
        assert ts - last.created_at <= timedelta(seconds=2)


# ---- Lifecycle against a directory replica ---------------------------------------------------------


def _ltx(lo: int, hi: int, pages: dict[int, bytes], commit: int, ts: datetime, ps: int = 512) -> bytes:
    buf = io.BytesIO()
    h = ltx.Header(page_size=ps, commit=commit, min_txid=lo, max_txid=hi, timestamp=int(ts.timestamp() * 1000))
    ltx.encode(h, sorted(pages.items()), buf)
    return buf.getvalue()


def _page(tag: int, ps: int = 512) -> bytes:
    return bytes([tag % 256]) * ps


def _stub_db(tmp_path: Path) -> Any:
    meta = tmp_path / "meta"
    (meta / "ltx" / "0").mkdir(parents=True)
    return SimpleNamespace(
        path=str(tmp_path / "db"),
        meta_dir=meta,
        l0_path=lambda txid: meta / "ltx" / "0" / f"{txid:016x}-{txid:016x}.ltx",
    )


async def _put(client: FileReplicaClient, level: int, data: bytes) -> FileInfo:
    h = ltx.Header.unpack(data)
    return await client.write_ltx_file(level, h.min_txid, h.max_txid, io.BytesIO(data))


async def test_lifecycle_compacts_levels_and_enforces_retention(tmp_path: Path) -> None:
    client = FileReplicaClient(str(tmp_path / "replica"))
    await client.init()
    settings = LifecycleSettings(levels=[2.0, 5.0], snapshot_interval=15.0, snapshot_retention=30.0, l0_retention=5.0)
    events: list[tuple[str, dict[str, Any]]] = []
    lc = Lifecycle(_stub_db(tmp_path), client, settings, hook=lambda e, f: events.append((e, f)))
    now = datetime.now(UTC)
    old = now - timedelta(seconds=60)
    # L0: a 3-page snapshot at txid 1, then page 2 rewritten at 2, page 4 added at 3.
    await _put(client, 0, _ltx(1, 1, {1: _page(1), 2: _page(2), 3: _page(3)}, 3, old))
    await _put(client, 0, _ltx(2, 2, {2: _page(22)}, 3, old + timedelta(seconds=1)))
    await _put(client, 0, _ltx(3, 3, {4: _page(4)}, 4, old + timedelta(seconds=2)))

    l1 = await lc.compact(1)
    assert l1 is not None and (l1.level, l1.min_txid, l1.max_txid) == (1, 1, 3)
    # Compaction output carries the last input's timestamp (ltx.Compactor).
    assert abs((l1.created_at - (old + timedelta(seconds=2))).total_seconds()) < 0.002
    assert await lc.compact(1) is None  # nothing new above L1's last TXID
    await _put(client, 0, _ltx(4, 4, {1: _page(41)}, 4, old + timedelta(seconds=3)))
    l1b = await lc.compact(1)
    assert l1b is not None and (l1b.min_txid, l1b.max_txid) == (4, 4)
    l2 = await lc.compact(2)
    assert l2 is not None and (l2.level, l2.min_txid, l2.max_txid) == (2, 1, 4)
    chunks = [c async for c in client.open_ltx_file(2, 1, 4)]
    dec = ltx.Decoder(io.BytesIO(b"".join(chunks)))
    assert dict(dec.pages()) == {1: _page(41), 2: _page(22), 3: _page(3), 4: _page(4)}
    assert [e for e, _ in events].count("compaction") == 3

    # L0 retention: every L0 file is covered by L1 and 57+ s old; the newest stays.
    deleted = await lc.enforce_l0_retention()
    assert spans(deleted) == [(1, 1), (2, 2), (3, 3)]
    assert spans(await client.ltx_files(0)) == [(4, 4)]

    # Snapshots: two old ones and one recent; the older old one goes, with L1 files below the base.
    for ts, hi in ((now - timedelta(seconds=50), 2), (now - timedelta(seconds=40), 3), (now, 4)):
        await _put(client, SNAPSHOT_LEVEL, _ltx(1, hi, {p: _page(p) for p in range(1, 5)}, 4, ts))
    deleted = await lc.enforce_snapshot_retention()
    assert sorted((f.level, f.min_txid, f.max_txid) for f in deleted) == [(1, 1, 3), (9, 1, 2)]
    assert spans(await client.ltx_files(SNAPSHOT_LEVEL)) == [(1, 3), (1, 4)]
    assert spans(await client.ltx_files(1)) == [(4, 4)]  # the level's last file always stays
    assert spans(await client.ltx_files(2)) == [(1, 4)]
    assert ("retention", {"db": lc.db.path, "deleted": 2}) in events


async def test_compaction_reads_local_l0_files_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local L0 file is sealed: compaction merges it where it is (no copy to write, read back and
    delete per input), leaves it in place, and downloads only what has no local copy."""
    from lifeboat.agent import compaction

    client = FileReplicaClient(str(tmp_path / "replica"))
    await client.init()
    db = _stub_db(tmp_path)
    now = datetime.now(UTC)
    files = [_ltx(1, 1, {1: _page(1), 2: _page(2)}, 2, now), _ltx(2, 2, {2: _page(22)}, 2, now),
             _ltx(3, 3, {3: _page(3)}, 3, now)]
    for data in files:
        await _put(client, 0, data)
    for data in files[:2]:  # txid 3 exists only in the replica
        h = ltx.Header.unpack(data)
        db.l0_path(h.max_txid).write_bytes(data)
    written: list[str] = []
    real_open = open

    def recording_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode:
            written.append(Path(path).name)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(compaction, "open", recording_open, raising=False)
    l1 = await Lifecycle(db, client, LifecycleSettings(levels=[30.0])).compact(1)
    assert l1 is not None and (l1.min_txid, l1.max_txid) == (1, 3)
    assert [n for n in written if n.startswith("in-")] == [f"in-0-{3:016x}-{3:016x}.ltx"]
    assert [db.l0_path(t).read_bytes() for t in (1, 2)] == files[:2]
    chunks = [c async for c in client.open_ltx_file(1, 1, 3)]
    assert dict(ltx.Decoder(io.BytesIO(b"".join(chunks))).pages()) == {1: _page(1), 2: _page(22), 3: _page(3)}


async def test_lifecycle_retention_disabled_deletes_nothing_remote(tmp_path: Path) -> None:
    client = FileReplicaClient(str(tmp_path / "replica"))
    await client.init()
    settings = LifecycleSettings(levels=[2.0], snapshot_retention=1.0, l0_retention=1.0, retention_enabled=False)
    db = _stub_db(tmp_path)
    lc = Lifecycle(db, client, settings)
    old = datetime.now(UTC) - timedelta(seconds=60)
    for t in (1, 2, 3):
        data = _ltx(t, t, {1: _page(t)}, 1, old + timedelta(seconds=t))
        await _put(client, 0, data)
        db.l0_path(t).write_bytes(data)
    assert await lc.compact(1) is not None
    for hi, age in ((1, 50), (2, 40), (3, 0)):
        await _put(client, SNAPSHOT_LEVEL, _ltx(1, hi, {1: _page(hi)}, 1, datetime.now(UTC) - timedelta(seconds=age)))
    assert await lc.enforce_snapshot_retention() == []
    assert len(await client.ltx_files(SNAPSHOT_LEVEL)) == 3
    doomed = await lc.enforce_l0_retention()
    assert spans(doomed) == [(1, 1), (2, 2)]
    assert len(await client.ltx_files(0)) == 3  # remote untouched
    assert not db.l0_path(1).exists() and not db.l0_path(2).exists() and db.l0_path(3).exists()  # local cleaned


# ---- CLI: replicate -once -force-snapshot -enforce-retention, ltx -level all, restore -dry-run ---


def _config(path: Path, db: Path, replica: Path) -> Path:
    path.write_text(
        "levels: [{interval: 1s}]\n"
        "snapshot: {interval: 1h, retention: 1s}\n"
        "l0-retention: 1s\n"
        f"dbs: [{{path: {db}, replica: {{url: {file_url(replica)}}}}}]\n"
    )
    return path


def _listing(conf: Path, db: Path) -> list[dict[str, Any]]:
    return json.loads(ok(lifeboat("ltx", "-config", str(conf), "-level", "all", "-json", str(db))).stdout)


def test_cli_once_force_snapshot_enforce_retention(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    replica = tmp_path / "replica"
    create_db(db)
    conf = _config(tmp_path / "litestream.yml", db, replica)
    app = sqlite3.connect(db)  # the application keeps the database open, so the WAL persists
    try:
        snaps: list[int] = []
        for k in range(3):
            write_batch(db, k)
            if k:
                time.sleep(1.2)  # the previous snapshot falls out of the 1 s retention window
            args = ["replicate", "-config", str(conf), "-once", "-force-snapshot"]
            if k == 2:
                args.append("-enforce-retention")
            ok(lifeboat(*args))
            rows = _listing(conf, db)
            snaps = [int(r["max_txid"], 16) for r in rows if r["level"] == SNAPSHOT_LEVEL]
            if k < 2:
                assert len(snaps) == k + 1  # one new snapshot per run, nothing deleted without the flag
        rows = _listing(conf, db)
        assert {r["level"] for r in rows} <= {0, SNAPSHOT_LEVEL}
        for r in rows:
            assert set(r) == {"level", "min_txid", "max_txid", "size", "created"}
            assert len(r["min_txid"]) == 16 and len(r["max_txid"]) == 16 and r["size"] > 0
            datetime.strptime(r["created"], "%Y-%m-%dT%H:%M:%SZ")
        l9 = [r for r in rows if r["level"] == SNAPSHOT_LEVEL]
        l0_max = max(int(r["max_txid"], 16) for r in rows if r["level"] == 0)
        # Three snapshots were written; the first is older than the window and not its base: gone.
        assert len(l9) == 2, l9
        assert all(r["min_txid"] == f"{1:016x}" for r in l9)
        assert int(l9[-1]["max_txid"], 16) == l0_max  # the forced snapshot is at the latest position

        plan_rows = json.loads(
            ok(
                lifeboat("restore", "-config", str(conf), "-dry-run", "-json", "-o", str(tmp_path / "x.db"), str(db))
            ).stdout
        )
        assert plan_rows[0]["level"] == SNAPSHOT_LEVEL
        assert plan_rows[0]["max_txid"] == l9[-1]["max_txid"]
        assert plan_rows[-1]["max_txid"] == f"{l0_max:016x}"
        for r in plan_rows:
            assert set(r) == {"level", "name", "min_txid", "max_txid", "size", "timestamp"}
            assert r["name"] == f"{r['min_txid']}-{r['max_txid']}.ltx"
        assert not (tmp_path / "x.db").exists()  # a dry run writes nothing

        for tool, out in ((lifeboat, "lb.db"), (litestream, "ls.db")):
            ok(tool("restore", "-o", str(tmp_path / out), file_url(replica)))
            assert_same_db(tmp_path / out, db)
    finally:
        app.close()


def test_cli_force_snapshot_requires_once(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    create_db(db)
    conf = _config(tmp_path / "litestream.yml", db, tmp_path / "replica")
    for flag in ("-force-snapshot", "-enforce-retention"):
        proc = lifeboat("replicate", "-config", str(conf), flag)
        assert proc.returncode == 1
        assert "require -once" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


async def test_snapshot_announces_the_l0_file_of_its_own_sync(tmp_path: Path) -> None:
    # `snapshot_to` syncs first: what the app committed since the last capture becomes an L0 file
    # that nothing else announces on an idle database, so the Lifecycle must wake the uploader.
    from lifeboat.agent.db import Database

    path = tmp_path / "app.db"
    create_db(path)
    client = FileReplicaClient(str(tmp_path / "replica"))
    await client.init()
    db = Database(str(path))
    db.open()
    try:
        db.sync()
        woken: list[int] = []
        lc = Lifecycle(db, client, LifecycleSettings(), on_new_l0=lambda: woken.append(db.pos))
        before = db.pos
        await lc.snapshot()
        assert woken == []  # nothing new: no wake-up
        write_batch(path, 1)
        info = await lc.snapshot()
        assert db.pos > before and info.max_txid == db.pos
        assert woken == [db.pos]
    finally:
        db.close()


async def test_one_local_l0_file_is_its_own_compaction(tmp_path: Path) -> None:
    # A single local L0 file merges into itself: it is shipped as it is, and a directory replica
    # links it (one inode for the local file, the L0 copy and the L1 file) instead of re-encoding.
    client = FileReplicaClient(str(tmp_path / "replica"))
    await client.init()
    db = _stub_db(tmp_path)
    data = _ltx(1, 1, {1: _page(1), 2: _page(2)}, 2, datetime.now(UTC))
    db.l0_path(1).write_bytes(data)
    await _put(client, 0, data)
    lc = Lifecycle(db, client, LifecycleSettings())
    info = await lc.compact(1)
    assert info is not None and (info.level, info.min_txid, info.max_txid) == (1, 1, 1)
    assert client.ltx_path(1, 1, 1).stat().st_ino == db.l0_path(1).stat().st_ino
    assert client.ltx_path(1, 1, 1).read_bytes() == data


async def test_a_local_l0_file_in_another_page_encoding_is_merged(tmp_path: Path) -> None:
    # Written before the page encoding was switched: the compacted file takes the current one.
    client = FileReplicaClient(str(tmp_path / "replica"))
    await client.init()
    db = _stub_db(tmp_path)
    ltx.use_block_encoding(True)
    try:
        data = _ltx(1, 1, {1: _page(1)}, 1, datetime.now(UTC))
    finally:
        ltx.use_block_encoding(False)
    db.l0_path(1).write_bytes(data)
    await _put(client, 0, data)
    info = await Lifecycle(db, client, LifecycleSettings()).compact(1)
    assert info is not None
    assert client.ltx_path(1, 1, 1).stat().st_ino != db.l0_path(1).stat().st_ino
    head = client.ltx_path(1, 1, 1).read_bytes()[: ltx.HEADER_SIZE + ltx.PAGE_HEADER_SIZE]
    assert ltx.first_page_in_current_encoding(head)


async def test_a_compaction_reads_local_l0_files_where_they_are(tmp_path: Path, monkeypatch: Any) -> None:
    # A hot database leaves thousands of L0 files per L1 interval: copying each into the work
    # directory first (on the event loop) cost every other database's captures their turn.
    from lifeboat.agent import compaction

    client = FileReplicaClient(str(tmp_path / "replica"))
    await client.init()
    db = _stub_db(tmp_path)
    now = datetime.now(UTC)
    for t in (1, 2, 3):
        data = _ltx(t, t, {1: _page(t), 2: _page(2)} if t == 1 else {1: _page(t)}, 2, now)
        db.l0_path(t).write_bytes(data)
        await _put(client, 0, data)
    await _put(client, 0, _ltx(4, 4, {2: _page(4)}, 2, now))  # not kept locally: fetched
    read: list[Path] = []
    real = compaction._merge_parts

    def spy(parts: list[Any], dest: Path) -> Any:
        read.extend(p.path for p in parts)
        return real(parts, dest)

    monkeypatch.setattr(compaction, "_merge_parts", spy)
    info = await Lifecycle(db, client, LifecycleSettings()).compact(1)
    assert info is not None and (info.min_txid, info.max_txid) == (1, 4)
    assert read[:3] == [db.l0_path(t) for t in (1, 2, 3)] and read[3].name.startswith("in-0-")
    assert all(db.l0_path(t).exists() for t in (1, 2, 3))  # left where they are
    dec = ltx.Decoder(io.BytesIO(client.ltx_path(1, 1, 4).read_bytes()))
    assert dict(dec.pages()) == {1: _page(3), 2: _page(4)}


async def test_a_level_holding_one_txid_compacts_into_the_next_as_that_txid_s_l0_file(tmp_path: Path) -> None:
    # An idle database's first file goes up every level alone: each level links the same L0 file.
    client = FileReplicaClient(str(tmp_path / "replica"))
    await client.init()
    db = _stub_db(tmp_path)
    data = _ltx(1, 1, {1: _page(1)}, 1, datetime.now(UTC))
    db.l0_path(1).write_bytes(data)
    await _put(client, 0, data)
    lc = Lifecycle(db, client, LifecycleSettings())
    for level in (1, 2, 3):
        assert await lc.compact(level) is not None
        assert client.ltx_path(level, 1, 1).stat().st_ino == db.l0_path(1).stat().st_ino
