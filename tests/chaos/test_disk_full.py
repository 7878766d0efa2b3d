"""Issue #8: the database's meta directory (`meta-path:`) runs out of space.

The meta directory is a real 2 MiB tmpfs (the tests run as root in CI; mounted here, unmounted in
teardown), filled to the last byte by a filler file. Writes to the database then cannot become L0
files: the agent must say so in one clear error line (naming the database and "No space left"),
set `litestream_disk_full` to 1, keep following the database, and once the filler is deleted
capture and ship everything the application wrote meanwhile, with the gauge back at 0.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Agent, assert_same_db, create_db, file_url, lifeboat, no_traceback, ok, write_batch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
        return r.read().decode()


def status(port: int) -> dict[str, object]:
    return json.loads(get(port, "/status"))["databases"][0]  # type: ignore[no-any-return]


def disk_full_gauge(port: int, db: Path) -> float | None:
    m = re.search(rf'^litestream_disk_full\{{db="{re.escape(str(db))}"\}} (\S+)$', get(port, "/metrics"), re.M)
    return None if m is None else float(m.group(1))


def wait(pred: object, what: str, agent: Agent, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pred():  # type: ignore[operator]
                return
        except OSError:
            pass  # the HTTP port is not up yet
        assert agent.alive(), f"replicate exited:\n{agent.output()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{agent.output()[-4000:]}"
        time.sleep(0.1)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs."""
    mnt = tmp_path / "meta"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True, capture_output=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def fill(directory: Path) -> Path:
    """Write a filler file until the file system reports ENOSPC."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 16, 4096, 512, 1):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    assert os.statvfs(directory).f_bavail == 0
    return filler


def test_meta_dir_disk_full_reports_and_recovers(tmp_path: Path, small_disk: Path) -> None:
    db = tmp_path / "app.db"
    replica = tmp_path / "replica"
    create_db(db)
    port = free_port()
    cfg = tmp_path / "litestream.yml"
    cfg.write_text(
        f"""addr: 127.0.0.1:{port}
dbs:
  - path: {db}
    meta-path: {small_disk}
    monitor-interval: 100ms
    replica:
      url: {file_url(replica)}
"""
    )
    batch = 0

    def write(n: int) -> None:
        nonlocal batch
        for _ in range(n):
            batch += 1
            write_batch(db, batch, rows=20)

    with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log") as agent:
        write(3)
        wait(lambda: (st := status(port))["remote_txid"] and st["txid"] == st["remote_txid"], "first upload", agent)
        # The start-up snapshot (level 9) is written through the meta directory too: let it finish.
        wait(lambda: any((replica / "ltx" / "9").glob("*.ltx")), "start-up snapshot", agent)
        assert disk_full_gauge(port, db) == 0
        before = status(port)["txid"]

        filler = fill(small_disk)
        write(10)  # about 60 KB of WAL that cannot become an L0 file
        wait(lambda: disk_full_gauge(port, db) == 1, "litestream_disk_full 1", agent)
        time.sleep(1.5)  # more failed retries (every monitor-interval): they must not repeat the error line
        write(2)
        time.sleep(0.5)
        st = status(port)
        assert st["txid"] == before, st  # nothing captured while full
        assert "No space left" in str(st["error"]), st
        assert disk_full_gauge(port, db) == 1
        full = [line for line in agent.output().splitlines() if "No space left" in line]
        errors = [line for line in full if "disk full" in line]
        assert len(errors) == 1, full  # one line per episode, not one per retry
        assert " ERROR " in errors[0] and str(db) in errors[0] and str(small_disk) in errors[0], errors[0]
        # A compaction or snapshot tick that falls into the window fails on its own (once per tick).
        assert all(re.search(r"(compaction|snapshot).* failed", line) for line in full if line not in errors), full

        filler.unlink()  # space returns
        wait(lambda: (st := status(port))["txid"] == st["remote_txid"] > before, "catch-up after disk full", agent)
        wait(lambda: disk_full_gauge(port, db) == 0, "litestream_disk_full 0", agent)
        assert status(port)["error"] is None
        write(3)
        wait(lambda: (st := status(port))["txid"] == st["remote_txid"] > before + 1, "replication resumed", agent)
        code = agent.stop(timeout=60)
        log = agent.output()
    assert code == 0, log
    no_traceback(log)
    assert "space is available again" in log, log[-3000:]
    out = tmp_path / "restored.db"
    ok(lifeboat("restore", "-o", str(out), file_url(replica)))
    assert_same_db(out, db)
    assert batch == 18
