"""Hostile input, table-driven: bad configs, URLs, CLI flags, SQLiteReplica specs, forged LTX files,
non-SQLite files, symlinks. Each gives one clear line naming the thing at fault, no traceback, a
non-zero exit, and nothing written outside the directory the operation owns."""

from __future__ import annotations

import io
import os
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastcrc import crc64
from helpers import LIFEBOAT, create_db, file_url
from lifeboat.agent import ltx
from lifeboat.operator import spec as specs

# ---- helpers ------------------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path, limit_as: int | None = None) -> subprocess.CompletedProcess[str]:
    pre = None
    if limit_as is not None:

        def pre() -> None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    return subprocess.run([*LIFEBOAT, *args], capture_output=True, text=True, timeout=60, cwd=cwd, preexec_fn=pre)


def one_line(proc: subprocess.CompletedProcess[str], needles: tuple[str, ...], codes: tuple[int, ...] = (1, 2)) -> None:
    err = proc.stderr.strip()
    assert proc.returncode in codes, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(err.splitlines()) == 1, f"expected one line on stderr:\n{proc.stderr}"
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """tmp/work (cwd, the database), tmp/outside (a sentinel nothing may touch)."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "outside").mkdir()
    create_db(work / "app.db")
    return tmp_path


def forge_ltx(path: Path, *, page_size: int = 4096, commit: int = 1, min_txid: int = 1, max_txid: int = 1) -> None:
    """A well-formed LTX file (valid checksum) whose header claims `commit` pages but holds page 1."""
    buf = io.BytesIO()
    h = ltx.Header(
        page_size=page_size, commit=1, min_txid=min_txid, max_txid=max_txid, timestamp=int(time.time() * 1e3)
    )
    page = bytearray(page_size)
    page[:16] = b"SQLite format 3\x00"
    ltx.encode(h, [(1, bytes(page))], buf)
    data = bytearray(buf.getvalue())
    struct.pack_into(">I", data, 12, commit)
    struct.pack_into(">Q", data, len(data) - 8, ltx.CHECKSUM_FLAG | crc64.go_iso(bytes(data[:-8])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))


# ---- configs ------------------------------------------------------------------------------------

DB = "{work}/app.db"
REP = "file://{work}/replica"
CONFIGS: list[tuple[str, str, tuple[str, ...]]] = [
    ("unknown-db-key", f"dbs:\n  - path: {DB}\n    bogus-key: 1\n    replica:\n      url: {REP}\n", ("bogus-key",)),
    ("unknown-top-key", f"frobnicate: 1\ndbs:\n  - path: {DB}\n    replica:\n      url: {REP}\n", ("frobnicate",)),
    (
        "dotdot-replica-url",
        f"dbs:\n  - path: {DB}\n    replica:\n      url: file://{{work}}/r/../../outside\n",
        ("..",),
    ),
    (
        "dotdot-replica-path",
        f"dbs:\n  - path: {DB}\n    replica:\n      type: file\n      path: {{work}}/../outside\n",
        ("..",),
    ),
    ("dotdot-s3-path", f"dbs:\n  - path: {DB}\n    replica:\n      url: s3://bucket/a/../../b\n", ("..",)),
    ("bad-scheme", f"dbs:\n  - path: {DB}\n    replica:\n      url: ftp://host/x\n", ("ftp",)),
    (
        "sync-interval-zero",
        f"dbs:\n  - path: {DB}\n    replica:\n      url: {REP}\n      sync-interval: 0s\n",
        ("sync-interval",),
    ),
    (
        "sync-interval-absurd",
        f"dbs:\n  - path: {DB}\n    replica:\n      url: {REP}\n      sync-interval: 9999h\n",
        ("sync-interval",),
    ),
    (
        "sync-interval-negative",
        f"dbs:\n  - path: {DB}\n    replica:\n      url: {REP}\n      sync-interval: -5s\n",
        ("sync-interval",),
    ),
    (
        "sync-interval-garbage",
        f"dbs:\n  - path: {DB}\n    replica:\n      url: {REP}\n      sync-interval: soon\n",
        ("sync-interval",),
    ),
    (
        "monitor-interval-tiny",
        f"dbs:\n  - path: {DB}\n    monitor-interval: 1ns\n    replica:\n      url: {REP}\n",
        ("monitor-interval",),
    ),
    (
        "checkpoint-pages-negative",
        f"dbs:\n  - path: {DB}\n    min-checkpoint-page-count: -3\n    replica:\n      url: {REP}\n",
        ("min-checkpoint-page-count",),
    ),
    (
        "truncate-page-n-string",
        f"dbs:\n  - path: {DB}\n    truncate-page-n: lots\n    replica:\n      url: {REP}\n",
        ("truncate-page-n",),
    ),
    (
        "max-sync-wal-bytes-zero",
        f"dbs:\n  - path: {DB}\n    max-sync-wal-bytes: 0\n    replica:\n      url: {REP}\n",
        ("max-sync-wal-bytes",),
    ),
    (
        "too-many-levels",
        "levels: [" + ", ".join(["{interval: 1m}"] * 12) + f"]\ndbs:\n  - path: {DB}\n    replica:\n      url: {REP}\n",
        ("levels",),
    ),
    (
        "level-interval-zero",
        f"levels: [{{interval: 0s}}]\ndbs:\n  - path: {DB}\n    replica:\n      url: {REP}\n",
        ("levels[0].interval",),
    ),
    ("no-replica", f"dbs:\n  - path: {DB}\n", ("replica",)),
    (
        "two-replica-forms",
        f"dbs:\n  - path: {DB}\n    replica: {{url: {REP}}}\n    replicas: [{{url: {REP}}}]\n",
        ("replicas",),
    ),
    ("dbs-not-a-list", "dbs: 7\n", ("dbs",)),
    ("top-not-a-mapping", "- just\n- a list\n", ("top level",)),
    ("invalid-yaml", "dbs: [\n  - path: {work}/app.db\n", ("yaml",)),
    ("undefined-env-only", f"dbs:\n  - path: {DB}\n    replica:\n      url: $LIFEBOAT_NO_SUCH_VAR\n", ("replica",)),
    (
        "skip-verify-not-bool",
        f"dbs:\n  - path: {DB}\n    replica:\n      url: s3://b/p\n      skip-verify: perhaps\n",
        ("skip-verify",),
    ),
]


@pytest.mark.parametrize(("name", "text", "needles"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_bad_config(ws: Path, name: str, text: str, needles: tuple[str, ...]) -> None:
    work = ws / "work"
    cfg = work / "litestream.yml"
    cfg.write_text(text.replace("{work}", str(work)))
    before = tree(ws)
    proc = run_cli("replicate", "-once", "-config", str(cfg), cwd=work)
    one_line(proc, needles)
    assert str(cfg) in proc.stderr or name in ("invalid-yaml",) or "yaml" in proc.stderr.lower()
    assert tree(ws) == before, f"files written: {sorted(tree(ws) - before)}"


# ---- URLs and CLI flags -------------------------------------------------------------------------

CLI: list[tuple[str, list[str], tuple[str, ...]]] = [
    ("replicate-unknown-scheme", ["replicate", "app.db", "http://example.com/x"], ("http",)),
    ("replicate-dotdot-url", ["replicate", "app.db", "file://{work}/r/../../outside"], ("..",)),
    ("replicate-dotdot-sftp", ["replicate", "app.db", "sftp://host/../../etc"], ("..",)),
    ("replicate-empty-url", ["replicate", "app.db", ""], ("replica",)),
    ("replicate-missing-db", ["replicate", "{work}/nope.db", "file://{work}/r"], ("nope.db", "does not exist")),
    ("replicate-three-args", ["replicate", "a", "b", "c"], ("exactly one",)),
    ("replicate-unknown-flag", ["replicate", "-frobnicate", "app.db"], ("-frobnicate",)),
    ("replicate-force-snapshot-no-once", ["replicate", "-force-snapshot", "app.db", "file://{work}/r"], ("-once",)),
    ("restore-bad-txid", ["restore", "-txid", "zz", "-o", "out.db", "file://{work}/r"], ("-txid", "zz")),
    ("restore-negative-txid", ["restore", "-txid", "-1", "-o", "out.db", "file://{work}/r"], ("-txid",)),
    (
        "restore-bad-timestamp",
        ["restore", "-timestamp", "yesterday", "-o", "o.db", "file://{work}/r"],
        ("-timestamp", "yesterday"),
    ),
    (
        "restore-txid-and-timestamp",
        ["restore", "-txid", "1", "-timestamp", "2026-01-01T00:00:00Z", "-o", "o.db", "file://{work}/r"],
        ("-txid",),
    ),
    ("restore-bad-integrity", ["restore", "-integrity-check", "maybe", "-o", "o.db", "file://{work}/r"], ("maybe",)),
    ("restore-no-output", ["restore", "file://{work}/r"], ("-o",)),
    (
        "restore-output-dir-missing",
        ["restore", "-o", "{work}/no/such/dir/o.db", "file://{work}/r"],
        ("{work}/no/such/dir",),
    ),
    ("restore-output-exists", ["restore", "-o", "app.db", "file://{work}/r"], ("app.db", "exists")),
    ("restore-bad-parallelism", ["restore", "-parallelism", "many", "-o", "o.db", "file://{work}/r"], ("parallelism",)),
    ("restore-unknown-scheme", ["restore", "-o", "o.db", "gopher://x/y"], ("gopher://x/y",)),
    ("restore-empty-replica", ["restore", "-o", "o.db", "file://{work}/empty-replica"], ("no matching backup",)),
    ("ltx-bad-level", ["ltx", "-level", "42", "file://{work}/r"], ("-level", "42")),
    ("unknown-command", ["frobnicate"], ("frobnicate",)),
    ("status-missing-config", ["status", "-config", "{work}/none.yml"], ("none.yml",)),
    ("reset-missing-db", ["reset", "{work}/nope.db"], ("nope.db",)),
]


@pytest.mark.parametrize(("name", "args", "needles"), CLI, ids=[c[0] for c in CLI])
def test_bad_cli(ws: Path, name: str, args: list[str], needles: tuple[str, ...]) -> None:
    work = ws / "work"
    (work / "empty-replica").mkdir()
    before = tree(ws)
    proc = run_cli(*[a.replace("{work}", str(work)) for a in args], cwd=work)
    one_line(proc, tuple(n.replace("{work}", str(work)) for n in needles))
    assert tree(ws) == before, f"files written: {sorted(tree(ws) - before)}"


# ---- SQLiteReplica specs (the operator's validation, operator/spec.py `problems`) ----------------

GOOD_SPEC = {"database": "/data/app.db", "replica": {"url": "s3://bucket/app"}}
SPECS: list[tuple[str, dict[str, object], str]] = [
    ("spec-unknown-scheme", {"replica": {"url": "ftp://x/y"}}, "replica.url"),
    ("spec-no-url", {"replica": {}}, "replica.url"),
    ("spec-option-wrong-backend", {"replica": {"url": "gs://b/p", "forcePathStyle": True}}, "forcePathStyle"),
    ("spec-hostkey-on-s3", {"replica": {"url": "s3://b/p", "hostKey": "ssh-ed25519 AAAA"}}, "hostKey"),
    ("spec-txid-and-timestamp", {"restore": {"txid": "1", "timestamp": "2026-01-01T00:00:00Z"}}, "restore"),
    ("spec-bad-sync-interval", {"syncInterval": "fast"}, "syncInterval"),
    ("spec-bad-max-lag", {"maxLag": "-1"}, "maxLag"),
]


@pytest.mark.parametrize(("name", "patch", "needle"), SPECS, ids=[s[0] for s in SPECS])
def test_bad_replica_spec(name: str, patch: dict[str, object], needle: str) -> None:
    assert specs.problems(GOOD_SPEC) == []
    found = specs.problems({**GOOD_SPEC, **patch})
    assert found, f"{patch} accepted"
    assert any(needle in p for p in found), found
    assert all("\n" not in p for p in found)


# ---- forged and foreign files -------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [512, 4096, 65536])
def test_forged_huge_page_count_is_bounded(ws: Path, page_size: int) -> None:
    """A header claiming 2^32-1 pages: restore fails naming the file, within 1 GB of address space."""
    work = ws / "work"
    rep = work / "replica"
    name = "0000000000000001-0000000000000001.ltx"
    forge_ltx(rep / "ltx" / "0" / name, page_size=page_size, commit=0xFFFFFFFF)
    out = work / "out"
    out.mkdir()
    proc = run_cli("restore", "-o", str(out / "r.db"), file_url(rep), cwd=work, limit_as=1 << 30)
    one_line(proc, (name,), codes=(1,))
    assert os.listdir(out) == []


def test_forged_bad_page_size(ws: Path) -> None:
    work = ws / "work"
    rep = work / "replica"
    name = "0000000000000001-0000000000000001.ltx"
    forge_ltx(rep / "ltx" / "0" / name)
    p = rep / "ltx" / "0" / name
    data = bytearray(p.read_bytes())
    struct.pack_into(">I", data, 8, 3000)  # not a power of two
    p.write_bytes(bytes(data))
    proc = run_cli("restore", "-o", str(work / "r.db"), file_url(rep), cwd=work)
    one_line(proc, (name,), codes=(1,))
    assert not (work / "r.db").exists()


def test_non_ltx_file_in_replica(ws: Path) -> None:
    work = ws / "work"
    rep = work / "replica"
    name = "0000000000000001-0000000000000001.ltx"
    (rep / "ltx" / "0").mkdir(parents=True)
    (rep / "ltx" / "0" / name).write_bytes(b"<html>not an ltx file</html>" * 10)
    proc = run_cli("restore", "-o", str(work / "r.db"), file_url(rep), cwd=work)
    one_line(proc, (name,), codes=(1,))
    assert not (work / "r.db").exists()


@pytest.mark.parametrize(
    ("what", "content"),
    [
        ("text", b"just some text, not a database\n" * 20),
        ("empty", b""),
        ("truncated-header", b"SQLite format 3\x00\x10\x00"),
        ("png", b"\x89PNG\r\n\x1a\n" + bytes(200)),
    ],
)
def test_replicate_non_sqlite_file(ws: Path, what: str, content: bytes) -> None:
    work = ws / "work"
    db = work / f"{what}.db"
    db.write_bytes(content)
    before = tree(ws)
    proc = run_cli("replicate", str(db), file_url(work / "r"), cwd=work)
    one_line(proc, (str(db),), codes=(1,))
    assert tree(ws) == before
    assert db.read_bytes() == content


def test_replicate_a_directory(ws: Path) -> None:
    work = ws / "work"
    (work / "dir.db").mkdir()
    proc = run_cli("replicate", str(work / "dir.db"), file_url(work / "r"), cwd=work)
    one_line(proc, ("dir.db",), codes=(1,))


def test_replicate_symlink_to_non_sqlite(ws: Path) -> None:
    work = ws / "work"
    target = ws / "outside" / "secret.txt"
    target.write_text("not a database " * 20)
    (work / "link.db").symlink_to(target)
    proc = run_cli("replicate", str(work / "link.db"), file_url(work / "r"), cwd=work)
    one_line(proc, ("link.db",), codes=(1,))
    assert sorted(os.listdir(ws / "outside")) == ["secret.txt"]


def _small_replica(work: Path) -> Path:
    rep = work / "replica"
    proc = run_cli("replicate", "-once", str(work / "app.db"), file_url(rep), cwd=work)
    assert proc.returncode == 0, proc.stderr
    return rep


def test_restore_to_dangling_symlink_never_writes_its_target(ws: Path) -> None:
    """`-o link` where link points outside: the output replaces the link, the target is never created."""
    work = ws / "work"
    rep = _small_replica(work)
    victim = ws / "outside" / "victim.db"
    (work / "link.db").symlink_to(victim)
    proc = run_cli("restore", "-o", str(work / "link.db"), file_url(rep), cwd=work)
    assert "Traceback" not in proc.stderr
    assert not victim.exists(), "restore wrote through a symlink outside its directory"
    assert sorted(os.listdir(ws / "outside")) == []
    if proc.returncode == 0:
        assert not (work / "link.db").is_symlink()
        assert sqlite3.connect(work / "link.db").execute("PRAGMA integrity_check").fetchone() == ("ok",)
    else:
        one_line(proc, ("link.db",), codes=(1,))


def test_restore_to_symlink_to_existing_file_refuses(ws: Path) -> None:
    work = ws / "work"
    rep = _small_replica(work)
    victim = ws / "outside" / "precious.db"
    victim.write_bytes(b"precious")
    (work / "link.db").symlink_to(victim)
    proc = run_cli("restore", "-o", str(work / "link.db"), file_url(rep), cwd=work)
    one_line(proc, ("link.db", "exists"), codes=(1,))
    assert victim.read_bytes() == b"precious"


def test_ltx_names_that_try_to_escape_are_ignored(ws: Path) -> None:
    """Files whose names are not `<16 hex>-<16 hex>.ltx` are not replica files: never planned or read."""
    work = ws / "work"
    rep = _small_replica(work)
    l0 = rep / "ltx" / "0"
    (l0 / "..%2f..%2fevil.ltx").write_bytes(b"x" * 200)
    (l0 / "0000000000000009-000000000000000a.ltx.tmp").write_bytes(b"x" * 200)
    (l0 / "zzzzzzzzzzzzzzzz-zzzzzzzzzzzzzzzz.ltx").write_bytes(b"x" * 200)
    out = work / "out"
    out.mkdir()
    proc = run_cli("restore", "-o", str(out / "r.db"), file_url(rep), cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(out) == ["r.db"]
    assert sorted(os.listdir(ws / "outside")) == []


def test_hostile_cases_count() -> None:
    """The issue asks for at least 40 table-driven hostile inputs."""
    assert len(CONFIGS) + len(CLI) + len(SPECS) >= 40


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
