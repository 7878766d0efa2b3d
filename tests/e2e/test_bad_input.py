"""Bad input: ONE clear line on stderr, a non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from helpers import LIFEBOAT, Agent, create_db, file_url, lifeboat, ok, wait_replica_started, write_batch


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str, code: int = 1) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == code, f"exit {proc.returncode}: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(err.splitlines()) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"
    return err


def no_leftovers(directory: Path, keep: set[str]) -> None:
    names = set(os.listdir(directory)) - keep
    assert not names, f"left behind: {sorted(names)}"


def test_database_not_in_wal_mode(tmp_path: Path) -> None:
    db = tmp_path / "rollback.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    proc = lifeboat("replicate", str(db), file_url(tmp_path / "r"))
    one_line_error(proc, str(db), "WAL")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.ltx"))
    no_leftovers(tmp_path, {"rollback.db", "r"})


def test_not_a_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "notes.db"
    db.write_text("hello, this is not a database at all " * 10)
    proc = lifeboat("replicate", str(db), file_url(tmp_path / "r"))
    one_line_error(proc, str(db), "not a SQLite database")
    no_leftovers(tmp_path, {"notes.db", "r"})


def test_missing_database(tmp_path: Path) -> None:
    proc = lifeboat("replicate", "/nope.db", "file:///x")
    one_line_error(proc, "/nope.db", "does not exist")
    assert not os.path.exists("/x")


def test_bad_url(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    create_db(db)
    proc = lifeboat("replicate", str(db), "foo://x")
    one_line_error(proc, "foo://x")
    proc = lifeboat("restore", "-o", str(tmp_path / "out.db"), "foo://x")
    one_line_error(proc, "foo://x")
    assert not (tmp_path / "out.db").exists()


def test_unknown_config_key(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    create_db(db)
    cfg = tmp_path / "litestream.yml"
    url = file_url(tmp_path / "r")
    cfg.write_text(f"dbs:\n  - path: {db}\n    min-checkpoint-pages: 50\n    replica:\n      url: {url}\n")
    proc = lifeboat("replicate", "-config", str(cfg))
    one_line_error(proc, "min-checkpoint-pages", str(cfg))
    assert not (tmp_path / "r").exists()


@pytest.fixture
def replica(tmp_path: Path) -> Path:
    """A small replica with several L0 files."""
    db = tmp_path / "src" / "app.db"
    db.parent.mkdir()
    create_db(db)
    rep = tmp_path / "replica"
    with Agent.lifeboat(str(db), file_url(rep), log=tmp_path / "agent.log") as agent:
        wait_replica_started(agent, rep)
        for b in range(1, 4):
            write_batch(db, b)
        assert agent.stop() == 0
    return rep


def _planned_file(replica: Path, n: int) -> Path:
    """The n-th file of the restore plan (corrupting a file the plan skips would prove nothing)."""
    plan = json.loads(ok(lifeboat("restore", "-dry-run", "-json", "-o", "/tmp/unused.db", file_url(replica))).stdout)
    assert len(plan) >= 2
    entry = plan[n]
    return replica / "ltx" / str(entry["level"]) / entry["name"]


@pytest.mark.parametrize("damage", ["bitflip", "truncate"])
@pytest.mark.parametrize("which", [0, -1])
def test_corrupt_ltx_in_replica(tmp_path: Path, replica: Path, damage: str, which: int) -> None:
    victim = _planned_file(replica, which)
    data = bytearray(victim.read_bytes())
    if damage == "bitflip":
        data[len(data) // 2] ^= 0x10
        victim.write_bytes(bytes(data))
    else:
        victim.write_bytes(bytes(data[: len(data) - 40]))
    outdir = tmp_path / "out"
    outdir.mkdir()
    proc = lifeboat("restore", "-o", str(outdir / "app.db"), file_url(replica))
    one_line_error(proc, victim.name)
    no_leftovers(outdir, set())


def test_output_exists(tmp_path: Path, replica: Path) -> None:
    out = tmp_path / "existing.db"
    create_db(out)
    before = out.read_bytes()
    proc = lifeboat("restore", "-o", str(out), file_url(replica))
    one_line_error(proc, str(out), "exists")
    assert out.read_bytes() == before
    proc = ok(lifeboat("restore", "-if-db-not-exists", "-o", str(out), file_url(replica)))
    assert "Traceback" not in proc.stderr
    assert out.read_bytes() == before
    no_leftovers(tmp_path, {"existing.db", "replica", "src", "agent.log"})


def test_a_missing_storage_sdk_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    """`pip install sqlite-lifeboat` without `[s3]`, then an s3:// URL: one line, exit 1."""
    hide = tmp_path / "site"
    hide.mkdir()
    (hide / "boto3.py").write_text('raise ModuleNotFoundError("No module named \'boto3\'", name="boto3")\n')
    env = dict(os.environ, PYTHONPATH=str(hide))
    out = tmp_path / "out.db"
    for args in (["restore", "-o", str(out), "s3://bucket/app"], ["ltx", "s3://bucket/app"]):
        proc = subprocess.run([*LIFEBOAT, *args], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert "pip install 'sqlite-lifeboat[s3]'" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()
