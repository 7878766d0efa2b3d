"""Restores never destroy or invent data: `-force` keeps the live database on any failure, a stale
`-wal`/`-shm`/`-journal` beside a missing output is refused, and a point in time the replica cannot
serve is an error (not a skipped restore) that names what it can serve.

Everything runs as processes: the `lifeboat` CLI with the flags the init container and the in-place
SQLiteRestore Job pass, against file replicas written by `lifeboat replicate -once`.
"""

from __future__ import annotations

import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import (
    batches,
    create_db,
    file_url,
    integrity,
    lifeboat,
    no_traceback,
    ok,
    rfc3339_ms,
    write_batch,
)
from lifeboat.agent.storage import parse_timestamp
from lifeboat.operator import agent_config
from lifeboat.operator.restores import restore_args

SIDECARS = ("-wal", "-shm", "-journal")


def _replica(tmp_path: Path, n: int = 3) -> str:
    """A replica of a database holding batches 1..n, one L0 file per batch; its URL."""
    src = tmp_path / "src" / "app.db"
    src.parent.mkdir()
    create_db(src)
    url = file_url(tmp_path / "replica")
    for k in range(1, n + 1):
        write_batch(src, k)
        ok(lifeboat("replicate", "-once", str(src), url))
    return url


def _live_db(path: Path) -> None:
    """A database as a running app leaves it: a table `live` in an uncheckpointed -wal, with its -shm."""
    work = path.parent.with_name(path.parent.name + "-src")
    work.mkdir()
    db = work / path.name
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = wal")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("CREATE TABLE live (v TEXT)")
    conn.execute("INSERT INTO live VALUES ('precious')")
    # copied while the connection is open: the -wal and -shm exist and hold the table
    for suffix in ("", "-wal", "-shm"):
        shutil.copyfile(f"{db}{suffix}", f"{path}{suffix}")
    conn.close()


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.parent.iterdir()) if p.is_file()}


def _one_line_failure(proc: object) -> str:
    assert proc.returncode == 1, f"exit {proc.returncode}: {proc.stderr}"  # type: ignore[attr-defined]
    stderr: str = proc.stderr  # type: ignore[attr-defined]
    no_traceback(stderr)
    assert len(stderr.strip().splitlines()) == 1, stderr
    return stderr


def _corrupt(replica: Path) -> None:
    """Flip bytes inside the page data of the replica's first (snapshot) file."""
    first = sorted((replica / "ltx" / "0").iterdir())[0]
    data = bytearray(first.read_bytes())
    for i in range(200, min(len(data) - 20, 400)):
        data[i] ^= 0x5A
    first.write_bytes(bytes(data))


# ---- -force keeps the live database on failure ------------------------------------------------------


@pytest.mark.parametrize("replica", ["empty", "mistyped", "corrupt"])
def test_force_keeps_live_database_on_failure(tmp_path: Path, replica: str) -> None:
    url = _replica(tmp_path)
    if replica == "empty":
        (tmp_path / "empty").mkdir()
        url = file_url(tmp_path / "empty")
    elif replica == "mistyped":
        url = file_url(tmp_path / "replcia")
    else:
        _corrupt(tmp_path / "replica")
    out_dir = tmp_path / "data"
    out_dir.mkdir()
    out = out_dir / "app.db"
    _live_db(out)
    before = _snapshot(out)
    _one_line_failure(lifeboat("restore", "-force", "-o", str(out), url))
    assert _snapshot(out) == before  # the database, its -wal and -shm untouched; no leftovers
    conn = sqlite3.connect(out)
    assert conn.execute("SELECT v FROM live").fetchall() == [("precious",)]
    conn.close()


def test_force_replaces_live_database_and_its_wal(tmp_path: Path) -> None:
    url = _replica(tmp_path)
    out = tmp_path / "data" / "app.db"
    out.parent.mkdir()
    _live_db(out)
    ok(lifeboat("restore", "-force", "-o", str(out), url))
    # the old -wal (which SQLite would apply to the new file) and -shm are gone
    assert sorted(p.name for p in out.parent.iterdir()) == ["app.db"]
    assert integrity(out) == "ok"
    assert batches(out) == {1, 2, 3}
    conn = sqlite3.connect(out)
    assert conn.execute("SELECT name FROM sqlite_schema WHERE name = 'live'").fetchall() == []
    conn.close()


@pytest.mark.parametrize("replica", ["empty", "good"])
def test_inplace_job_command(tmp_path: Path, replica: str) -> None:
    """The exact arguments of the in-place SQLiteRestore Job: the live database survives a failure and
    is replaced by a success."""
    url = _replica(tmp_path) if replica == "good" else file_url(tmp_path / "nothing")
    out = tmp_path / "data" / "app.db"
    out.parent.mkdir()
    _live_db(out)
    before = _snapshot(out)
    config = tmp_path / "lifeboat.yml"
    config.write_text(f"dbs:\n  - path: {out}\n    replica:\n      url: {url}\n")
    args = [str(config) if a == agent_config.CONFIG_PATH else a for a in restore_args({"verify": True}, str(out))]
    proc = lifeboat(*args)
    if replica == "empty":
        _one_line_failure(proc)
        assert _snapshot(out) == before
    else:
        ok(proc)
        assert sorted(p.name for p in out.parent.iterdir()) == ["app.db"]
        assert batches(out) == {1, 2, 3}


# ---- a stale -wal/-shm/-journal beside a missing output ---------------------------------------------


def _stale_sidecar(out: Path, suffix: str) -> None:
    """`<out><suffix>` left by another database (its -wal holds a table `live`), `<out>` missing."""
    _live_db(out)
    for s in ("", "-wal", "-shm"):
        if s != suffix:
            Path(f"{out}{s}").unlink()
    if suffix == "-journal":
        Path(f"{out}{suffix}").write_bytes(b"\0" * 512)


@pytest.mark.parametrize("suffix", SIDECARS)
@pytest.mark.parametrize("flags", [[], ["-if-db-not-exists", "-if-replica-exists"]], ids=["plain", "init"])
def test_stale_sidecar_beside_missing_output_is_refused(tmp_path: Path, suffix: str, flags: list[str]) -> None:
    url = _replica(tmp_path)
    out = tmp_path / "data" / "app.db"
    out.parent.mkdir()
    _stale_sidecar(out, suffix)
    before = _snapshot(out)
    err = _one_line_failure(lifeboat("restore", *flags, "-o", str(out), url))
    assert f"{out}{suffix}" in err
    assert _snapshot(out) == before  # nothing restored, the stale file kept for its owner to judge


def test_stale_wal_with_force_is_replaced(tmp_path: Path) -> None:
    url = _replica(tmp_path)
    out = tmp_path / "data" / "app.db"
    out.parent.mkdir()
    _stale_sidecar(out, "-wal")
    ok(lifeboat("restore", "-force", "-o", str(out), url))
    assert sorted(p.name for p in out.parent.iterdir()) == ["app.db"]
    assert batches(out) == {1, 2, 3}
    conn = sqlite3.connect(out)
    assert conn.execute("SELECT name FROM sqlite_schema WHERE name = 'live'").fetchall() == []
    conn.close()


# ---- a point in time the replica cannot serve ---------------------------------------------------------


def _range(url: str) -> tuple[str, str, str, str]:
    """(first txid, its time, last txid, its time) as the L0 listing shows them."""
    rows = [line.split() for line in ok(lifeboat("ltx", url)).stdout.splitlines()[1:] if line.strip()]
    return rows[0][1], rows[0][4], rows[-1][2], rows[-1][4]


def test_if_replica_exists_skips_only_an_empty_replica(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "app.db"
    flags = ["-if-db-not-exists", "-if-replica-exists"]
    proc = ok(lifeboat("restore", *flags, "-o", str(out), file_url(tmp_path / "empty")))
    assert "skipping" in proc.stderr
    assert not out.exists()
    url = _replica(tmp_path, 2)
    ok(lifeboat("restore", *flags, "-o", str(out), url))
    assert batches(out) == {1, 2}


@pytest.mark.parametrize("target", ["timestamp", "txid"])
def test_unservable_target_fails_naming_the_range(tmp_path: Path, target: str) -> None:
    url = _replica(tmp_path)
    first_txid, first_time, last_txid, last_time = _range(url)
    if target == "timestamp":
        point = ["-timestamp", rfc3339_ms(parse_timestamp(first_time) - timedelta(seconds=5))]
    else:
        point = ["-txid", f"{int(last_txid, 16) + 1:016x}"]
    out = tmp_path / "app.db"
    err = _one_line_failure(
        lifeboat("restore", "-if-db-not-exists", "-if-replica-exists", *point, "-o", str(out), url)
    )
    assert not out.exists()
    assert "no matching backup files available" in err
    for value in (first_txid, last_txid):
        assert value in err, err
    # the times as RFC 3339, at the listing's precision or finer
    for value in (first_time, last_time):
        assert rfc3339_ms(parse_timestamp(value))[:19] in err, err
    assert datetime.now(UTC) > parse_timestamp(last_time)
