"""Restores that survive the network: downloads broken mid-body resume by range, failed requests are
retried with backoff, progress is shown; and a restore -force that the network defeats leaves the
live database as it was.

`lifeboat restore` runs as a process against moto through `faults.FaultProxy`; the replica is written
by `lifeboat replicate -once` straight to moto.
"""

from __future__ import annotations

import os
import pty
import re
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import FaultProxy
from helpers import LIFEBOAT, assert_same_db, create_db, lifeboat, no_traceback, ok
from replica_helpers import BUCKET, PORTS, S3_ENDPOINT, SFTPServer, env_for, write_yaml

FILES = 12
SIZE = r"[\d.,]+ (?:B|KiB|MiB|GiB)"
PROGRESS = re.compile(rf"restoring: (\d+)/(\d+) files, {SIZE} of {SIZE}, {SIZE}/s, ETA \d+m\d\ds")


@pytest.fixture
def proxy(servers: SFTPServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    env_for(monkeypatch)
    with FaultProxy(PORTS["s3"], delay=0.6) as p:
        yield p


def _block(endpoint: str, name: str) -> dict[str, Any]:
    return {"url": f"s3://{BUCKET}/{name}", "endpoint": endpoint, "region": "us-east-1", "force-path-style": True}


def _replicated(tmp_path: Path, rows: int) -> tuple[Path, str]:
    """A database of `rows` random 4 KiB rows whose replica on moto holds a multi-MB snapshot and
    then FILES - 1 small L0 files; the database and the replica's name."""
    db = tmp_path / "src.db"
    create_db(db)
    name = f"restore-faults-{uuid.uuid4().hex[:12]}"
    config = write_yaml(tmp_path / "direct.yml", db, _block(S3_ENDPOINT, name))
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executemany("INSERT INTO t (batch, v) VALUES (0, ?)", [(os.urandom(2048).hex(),) for _ in range(rows)])
    ok(lifeboat("replicate", "-once", "-config", str(config)))
    for k in range(1, FILES):
        conn.execute("INSERT INTO t (batch, v) VALUES (?, 'x')", (k,))
        ok(lifeboat("replicate", "-once", "-config", str(config)))
    conn.close()
    return db, name


def _restore(tmp_path: Path, proxy: FaultProxy, name: str, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    config = write_yaml(tmp_path / f"proxied-{out.name}.yml", out, _block(proxy.endpoint, name))
    return lifeboat("restore", *flags, "-config", str(config), str(out), timeout=300)


def test_download_broken_mid_body_resumes_by_range(tmp_path: Path, proxy: FaultProxy) -> None:
    db, name = _replicated(tmp_path, rows=1500)  # a snapshot of several MB
    proxy.set_mode("cut", every=2)  # every other large body is cut halfway
    out = tmp_path / "restored.db"
    proc = ok(_restore(tmp_path, proxy, name, out))
    assert proxy.injected["cut"] >= 1, proxy.injected
    assert "resuming at byte" in proc.stderr
    no_traceback(proc.stderr)
    # the download went on where it broke, not from the start
    resumed = [int(r.removeprefix("bytes=").split("-")[0]) for r in proxy.ranges if r]
    assert max(resumed) > 0, proxy.ranges
    assert_same_db(out, db)


def test_failed_requests_are_retried(tmp_path: Path, proxy: FaultProxy) -> None:
    db, name = _replicated(tmp_path, rows=50)
    out = tmp_path / "restored.db"
    for mode in ("reset", "5xx", "throttle"):
        proxy.set_mode(mode, every=2)
        ok(_restore(tmp_path, proxy, name, out, "-force"))
        assert_same_db(out, db)
    assert min(proxy.injected.values()) >= 2, proxy.injected


def test_progress_lines_when_not_a_terminal(tmp_path: Path, proxy: FaultProxy) -> None:
    _, name = _replicated(tmp_path, rows=50)
    proxy.set_mode("slow", every=1)  # FILES downloads one after another, each slower than...
    out = tmp_path / "restored.db"
    proc = ok(_restore(tmp_path, proxy, name, out, "-parallelism", "1"))
    lines = [m for line in proc.stderr.splitlines() if (m := PROGRESS.fullmatch(line))]
    # ... so the restore lasts longer than the log interval: periodic lines, then the final count
    assert lines, proc.stderr
    assert lines[-1].group(1) == lines[-1].group(2) == str(FILES), proc.stderr
    assert "\r" not in proc.stderr


def test_progress_redrawn_on_a_terminal(tmp_path: Path, proxy: FaultProxy) -> None:
    _, name = _replicated(tmp_path, rows=50)
    out = tmp_path / "restored.db"
    config = write_yaml(tmp_path / "proxied.yml", out, _block(proxy.endpoint, name))
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([*LIFEBOAT, "restore", "-config", str(config), str(out)], stderr=follower,
                              stdout=subprocess.DEVNULL, timeout=120, check=False)
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0, shown
    text = shown.decode()
    drawn = [part.removesuffix("\x1b[K") for part in re.split(r"[\r\n]+", text) if part.startswith("restoring:")]
    assert drawn and PROGRESS.fullmatch(drawn[-1]), text
    assert PROGRESS.fullmatch(drawn[-1]).group(1) == str(FILES)  # type: ignore[union-attr]


def test_force_over_a_dead_network_keeps_the_live_database(tmp_path: Path, proxy: FaultProxy) -> None:
    _, name = _replicated(tmp_path, rows=50)
    out = tmp_path / "live.db"
    create_db(out)
    conn = sqlite3.connect(out)
    conn.execute("INSERT INTO t (batch, v) VALUES (7, 'precious')")
    conn.commit()
    conn.close()
    before = out.read_bytes()
    proxy.set_mode("cut", every=1)
    proxy.cut_over = 0  # every response with a body is cut, the listings too: nothing gets through
    proc = _restore(tmp_path, proxy, name, out, "-force")
    assert proc.returncode == 1, proc.stderr
    no_traceback(proc.stderr)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("live.db")) == ["live.db"]
