"""Directory replication (`dir:`, `pattern:`, `recursive:`, `watch:`): every database under a directory,
each to `<replica>/<relative path>`, restorable one by one by the real `litestream` binary."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Agent, create_db, file_url, l0_txids, lifeboat, litestream, ok, rows, wait_for, write_batch

S3_ENDPOINT = "http://127.0.0.1:18001"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="lbdir", dir="/tmp"))  # Unix socket paths are short
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _config(tmp_path: Path, data: Path, replica_block: str, *, watch: bool, recursive: bool = True,
            sock: Path | None = None, extra: str = "") -> Path:
    cfg = tmp_path / "litestream.yml"
    head = f"socket:\n  enabled: true\n  path: {sock}\n" if sock else ""
    cfg.write_text(
        f"{head}dbs:\n  - dir: {data}\n    pattern: '*.db'\n    recursive: {str(recursive).lower()}\n"
        f"    watch: {str(watch).lower()}\n{extra}    replica:\n{replica_block}"
    )
    return cfg


def _file_replica(replica: Path) -> str:
    return f"      url: {file_url(replica)}\n"


def _listed(sock: Path) -> set[str]:
    out = json.loads(ok(lifeboat("list", "-socket", str(sock), "-json")).stdout)
    return {d["path"] for d in out["databases"]}


def _restore_batches(tmp_path: Path, url: str) -> set[int]:
    out = tmp_path / f"restored-{uuid.uuid4().hex[:8]}.db"
    ok(litestream("restore", "-o", str(out), url))
    return {r[1] for r in rows(out)}


def test_every_database_under_the_directory_is_replicated_and_restorable_by_litestream(tmp_path: Path) -> None:
    data, replica = tmp_path / "data", tmp_path / "replica"
    (data / "team-a").mkdir(parents=True)
    dbs = {"app.db": data / "app.db", "team-a/db2.db": data / "team-a" / "db2.db"}
    for i, db in enumerate(dbs.values(), 1):
        create_db(db)
        write_batch(db, i)
    # Files the pattern selects that are not databases, and databases the pattern does not select.
    (data / "notes.db").write_text("not a database\n")
    (data / "empty.db").touch()
    create_db(data / "other.sqlite")
    cfg = _config(tmp_path, data, _file_replica(replica), watch=False)
    with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log") as agent:
        for rel in dbs:
            wait_for(lambda rel=rel: l0_txids(replica / rel), 60, what=f"replica of {rel}")
        for i, db in enumerate(dbs.values(), 1):
            write_batch(db, 10 + i)
        assert agent.stop() == 0, agent.output()
    assert sorted(p.relative_to(replica).as_posix() for p in replica.rglob("ltx") if p.is_dir()) == [
        "app.db/ltx", "team-a/db2.db/ltx",
    ]
    for i, rel in enumerate(dbs, 1):
        assert _restore_batches(tmp_path, file_url(replica / rel)) == {i, 10 + i}


def test_non_recursive_ignores_subdirectories_and_no_database_is_an_error(tmp_path: Path) -> None:
    data, replica = tmp_path / "data", tmp_path / "replica"
    (data / "sub").mkdir(parents=True)
    create_db(data / "sub" / "deep.db")
    cfg = _config(tmp_path, data, _file_replica(replica), watch=False, recursive=False)
    proc = lifeboat("replicate", "-config", str(cfg))
    assert proc.returncode == 1, proc.stderr
    assert f"no SQLite databases found in directory {data} with pattern *.db" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_watch_follows_new_and_removed_databases(tmp_path: Path, sock_dir: Path) -> None:
    data, replica, sock = tmp_path / "data", tmp_path / "replica", sock_dir / "ctl.sock"
    data.mkdir()
    first = data / "first.db"
    create_db(first)
    cfg = _config(tmp_path, data, _file_replica(replica), watch=True, sock=sock)
    with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log") as agent:
        wait_for(lambda: sock.exists() and _listed(sock) == {str(first)}, 60, what="first database")
        # A database created while running, and one in a directory created while running.
        second, nested = data / "second.db", data / "tenant" / "x" / "third.db"
        create_db(second)
        write_batch(second, 2)
        nested.parent.mkdir(parents=True)
        create_db(nested)
        write_batch(nested, 3)
        wait_for(lambda: _listed(sock) == {str(first), str(second), str(nested)}, 60, what="new databases")
        for db, batch in ((second, 4), (nested, 5)):
            write_batch(db, batch)
            ok(lifeboat("sync", "-socket", str(sock), "-wait", str(db)))
        # A removed database stops being followed; the others go on.
        for suffix in ("", "-wal", "-shm"):
            Path(f"{first}{suffix}").unlink(missing_ok=True)
        wait_for(lambda: _listed(sock) == {str(second), str(nested)}, 60, what="removal of first.db")
        assert agent.alive(), agent.output()
        assert agent.stop() == 0, agent.output()
    assert _restore_batches(tmp_path, file_url(replica / "second.db")) == {2, 4}
    assert _restore_batches(tmp_path, file_url(replica / "tenant" / "x" / "third.db")) == {3, 5}


def test_fifty_databases_in_one_agent(tmp_path: Path, sock_dir: Path) -> None:
    data, replica, sock = tmp_path / "data", tmp_path / "replica", sock_dir / "ctl.sock"
    paths = [data / f"t{i // 10}" / f"db{i:02d}.db" for i in range(50)]
    for i, db in enumerate(paths):
        db.parent.mkdir(parents=True, exist_ok=True)
        create_db(db)
        write_batch(db, i)
    cfg = _config(tmp_path, data, _file_replica(replica), watch=True, sock=sock)
    with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log") as agent:
        wait_for(lambda: sock.exists() and len(_listed(sock)) == 50, 120, what="50 databases")
        # One inotify instance for every WAL and one for the directory tree, not one per database:
        # the kernel allows 128 per user by default.
        assert _inotify_instances(agent.proc.pid) <= 2
        for i, db in enumerate(paths):
            write_batch(db, 100 + i)
        for db in paths:
            ok(lifeboat("sync", "-socket", str(sock), "-wait", str(db)))
        assert agent.stop() == 0, agent.output()
    for i, db in enumerate(paths):
        rel = db.relative_to(data).as_posix()
        assert _restore_batches(tmp_path, file_url(replica / rel)) == {i, 100 + i}, rel


def _inotify_instances(pid: int) -> int:
    """The agent's inotify descriptors (others it closes while they are counted are skipped)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            count += os.readlink(fd) == "anon_inode:inotify"
    return count


def _moto_bucket() -> str:
    with socket.socket() as s:
        s.settimeout(0.5)
        if s.connect_ex(("127.0.0.1", 18001)) != 0:
            pytest.fail("moto S3 is not running on 127.0.0.1:18001")
    import boto3

    name = f"lifeboat-dir-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=S3_ENDPOINT, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def test_directory_mode_on_s3(tmp_path: Path, sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")):
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)  # litestream fails on it: "unable to add custom RootCAs"
    bucket = _moto_bucket()
    data, sock = tmp_path / "data", sock_dir / "ctl.sock"
    paths = [data / "a.db", data / "team" / "b.db", data / "team" / "c.db"]
    for i, db in enumerate(paths):
        db.parent.mkdir(parents=True, exist_ok=True)
        create_db(db)
        write_batch(db, i)
    url = f"s3://{bucket}/tenants?endpoint={S3_ENDPOINT}&forcePathStyle=true"
    block = f"      url: {url}\n"
    cfg = _config(tmp_path, data, block, watch=True, sock=sock)
    with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log") as agent:
        wait_for(lambda: sock.exists() and len(_listed(sock)) == 3, 120, what="3 databases")
        late = data / "team" / "late.db"
        create_db(late)
        write_batch(late, 9)
        paths.append(late)
        wait_for(lambda: len(_listed(sock)) == 4, 60, what="late database")
        for db in paths:
            ok(lifeboat("sync", "-socket", str(sock), "-wait", str(db)))
        assert agent.stop() == 0, agent.output()
    for i, db in enumerate(paths):
        rel = db.relative_to(data).as_posix()
        got = _restore_batches(tmp_path, f"s3://{bucket}/tenants/{rel}?endpoint={S3_ENDPOINT}&forcePathStyle=true")
        assert got == ({9} if db == late else {i}), rel


def test_once_with_meta_dir(tmp_path: Path) -> None:
    data, replica, meta = tmp_path / "data", tmp_path / "replica", tmp_path / "meta"
    db = data / "team" / "a.db"
    db.parent.mkdir(parents=True)
    create_db(db)
    write_batch(db, 1)
    cfg = _config(tmp_path, data, _file_replica(replica), watch=False, extra=f"    meta-dir: {meta}\n")
    ok(lifeboat("replicate", "-once", "-config", str(cfg)))
    assert (meta / "team" / "a.db-litestream" / "ltx" / "0").is_dir()
    assert not (data / "team" / ".a.db-litestream").exists()
    assert _restore_batches(tmp_path, file_url(replica / "team" / "a.db")) == {1}


def test_one_shot_commands_resolve_a_database_under_a_configured_directory(tmp_path: Path) -> None:
    """`restore`, `ltx`, `status`, `databases` and `reset` with -config see each database of a `dir:`
    entry, configured as replication configures it: `<replica>/<relative path>`, `meta-dir`."""
    data, replica, meta = tmp_path / "data", tmp_path / "replica", tmp_path / "meta"
    (data / "team").mkdir(parents=True)
    dbs = [data / "app.db", data / "team" / "b.db"]
    for i, db in enumerate(dbs, 1):
        create_db(db)
        write_batch(db, i)
    cfg = _config(tmp_path, data, _file_replica(replica), watch=False, extra=f"    meta-dir: {meta}\n")
    ok(lifeboat("replicate", "-once", "-config", str(cfg)))

    listed = json.loads(ok(lifeboat("databases", "-config", str(cfg), "-json")).stdout)
    assert listed == [{"path": str(db), "replica": "file"} for db in dbs]
    status = json.loads(ok(lifeboat("status", "-config", str(cfg), "-json")).stdout)
    assert [(s["path"], s["status"]) for s in status] == [(str(db), "ok") for db in dbs]
    one = json.loads(ok(lifeboat("status", "-config", str(cfg), "-json", str(dbs[1]))).stdout)
    assert [s["path"] for s in one] == [str(dbs[1])] and one[0]["txid"] != f"{0:016x}"

    ours = json.loads(ok(lifeboat("ltx", "-config", str(cfg), "-json", str(dbs[1]))).stdout)
    theirs = json.loads(ok(litestream("ltx", "-json", file_url(replica / "team" / "b.db"))).stdout)
    assert [(r["min_txid"], r["max_txid"]) for r in ours] == [(r["min_txid"], r["max_txid"]) for r in theirs]

    dry = ok(lifeboat("reset", "-config", str(cfg), "-dry-run", str(dbs[1]))).stdout
    assert str(meta / "team" / "b.db-litestream" / "ltx") in dry

    want = rows(dbs[1])
    for suffix in ("", "-wal", "-shm"):
        Path(f"{dbs[1]}{suffix}").unlink(missing_ok=True)
    ok(lifeboat("restore", "-config", str(cfg), str(dbs[1])))  # the output is the database's own path
    assert rows(dbs[1]) == want == _litestream_rows(tmp_path, file_url(replica / "team" / "b.db"))

    for outside in (tmp_path / "elsewhere.db", data / "app.sqlite", data / "team" / "b.db-wal"):
        proc = lifeboat("restore", "-config", str(cfg), "-o", str(tmp_path / "x.db"), str(outside))
        assert proc.returncode == 1 and f"database not found in config {cfg}: {outside}" in proc.stderr, proc.stderr


def test_a_non_recursive_directory_does_not_own_its_subdirectories(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    create_db(data / "app.db")
    cfg = _config(tmp_path, data, _file_replica(tmp_path / "replica"), watch=False, recursive=False)
    ok(lifeboat("status", "-config", str(cfg), str(data / "app.db")))
    proc = lifeboat("status", "-config", str(cfg), str(data / "team" / "b.db"))
    assert proc.returncode == 1 and "database not found in config" in proc.stderr, proc.stderr


def _litestream_rows(tmp_path: Path, url: str) -> list[tuple[object, ...]]:
    out = tmp_path / f"litestream-{uuid.uuid4().hex[:8]}.db"
    ok(litestream("restore", "-o", str(out), url))
    return rows(out)
