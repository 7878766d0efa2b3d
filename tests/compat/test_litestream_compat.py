"""Byte compatibility with the real `litestream` 0.5.17 binary, both directions, two page sizes.

A separate writer process writes while the agent replicates; a low `min-checkpoint-page-count`
makes checkpoints happen mid-stream (seen as the database *file* growing: only a checkpoint copies
WAL pages into it).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from helpers import (
    Agent,
    assert_same_db,
    create_db,
    file_page_count,
    file_url,
    lifeboat,
    litestream,
    no_traceback,
    ok,
    start_writer,
    wait_replica_started,
    wait_writer,
    write_config,
)

PAGE_SIZES = [4096, 65536]


def page_encodings(path: Path) -> set[int]:
    """The page-header flags of every page of an LTX file, found through its page index."""
    data = path.read_bytes()
    (index_size,) = struct.unpack_from(">Q", data, len(data) - 24)
    pos, end, flags = len(data) - 24 - index_size, len(data) - 25, set()
    while pos < end:
        fields = []
        for _ in range(3):
            value = shift = 0
            while True:
                b = data[pos]
                pos += 1
                value |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            fields.append(value)
        flags.add(struct.unpack_from(">H", data, fields[1] + 4)[0])
    return flags


def _setup(tmp_path: Path, page_size: int, encoding: str | None = None) -> tuple[Path, Path, Path]:
    db = tmp_path / "app.db"
    replica = tmp_path / "replica"
    create_db(db, page_size)
    cfg = write_config(tmp_path / "litestream.yml", db, replica, **{"min-checkpoint-page-count": 50})
    if encoding is not None:
        cfg.write_text(f"ltx-page-encoding: {encoding}\n" + cfg.read_text())
    return db, replica, cfg


@pytest.mark.parametrize(("page_size", "encoding"), [(4096, None), (65536, None), (4096, "block")])
def test_litestream_restores_lifeboat_replica(tmp_path: Path, page_size: int, encoding: str | None) -> None:
    db, replica, cfg = _setup(tmp_path, page_size, encoding)
    pages_before = file_page_count(db)
    with Agent.lifeboat("-config", str(cfg), log=tmp_path / "agent.log") as agent:
        wait_replica_started(agent, replica)
        # rows of ~300 bytes: 20 per batch; 64 KiB pages need more commits to reach 50 WAL frames
        writer = start_writer(db, 1, 80 if page_size == 65536 else 40, rows=20, pause=0.01)
        wait_writer(writer)
        code = agent.stop()
        log = agent.output()
    assert code == 0, log
    no_traceback(log)
    assert file_page_count(db) > pages_before, "no checkpoint happened during replication"
    # By default every file, L0 and L9 alike, uses the page encoding that Litestream 0.5.0-0.5.15
    # read too (flags 0, one LZ4 frame per page): their decoder rejects any other page flags.
    # `ltx-page-encoding: block` writes flags 1 (size-prefixed LZ4 blocks) everywhere instead.
    files = sorted(replica.glob("ltx/*/*.ltx"))
    assert {p.parent.name for p in files} >= {"0", "9"}
    flags = 1 if encoding == "block" else 0
    assert {p.name: page_encodings(p) for p in files} == {p.name: {flags} for p in files}

    out = tmp_path / "restored-by-litestream.db"
    ok(litestream("restore", "-o", str(out), file_url(replica)))
    assert_same_db(out, db)

    # and lifeboat agrees with itself
    out2 = tmp_path / "restored-by-lifeboat.db"
    ok(lifeboat("restore", "-integrity-check", "full", "-o", str(out2), file_url(replica)))
    assert_same_db(out2, db)


@pytest.mark.parametrize(("page_size", "form"), [(4096, "config"), (65536, "config"), (4096, "positional")])
def test_lifeboat_restores_litestream_replica(tmp_path: Path, page_size: int, form: str) -> None:
    db, replica, cfg = _setup(tmp_path, page_size)
    args = ["-config", str(cfg)] if form == "config" else [str(db), file_url(replica)]
    pages_before = file_page_count(db)
    with Agent.litestream(*args, log=tmp_path / "litestream.log") as agent:
        wait_replica_started(agent, replica)
        writer = start_writer(db, 1, 80 if page_size == 65536 else 40, rows=20, pause=0.01)
        wait_writer(writer)
        agent.stop()
    if form == "config":
        assert file_page_count(db) > pages_before, "litestream did not checkpoint"

    out = tmp_path / "restored-by-lifeboat.db"
    proc = ok(lifeboat("restore", "-o", str(out), file_url(replica)))
    no_traceback(proc.stderr)
    assert_same_db(out, db)
