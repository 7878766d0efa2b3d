"""A follower killed while its first restore is installed can always start again."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from helpers import create_db, lifeboat, ok, write_config
from lifeboat.agent import follow
from lifeboat.agent.storage import new_client


class Killed(BaseException):
    """Stands for SIGKILL at the moment it is raised: nothing after it runs."""


async def test_a_restored_database_never_lands_without_its_txid_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed as the `-txid` file is written, the follower leaves no database behind, so the next start
    restores afresh. The database used to be installed first: killed then, it left a database
    without its `-txid`, and every later start refused to resume ("delete the database")."""
    db, replica = tmp_path / "app.db", tmp_path / "replica"
    create_db(db)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("INSERT INTO t (batch, v) VALUES (1, 'x')")
    conn.close()
    ok(lifeboat("replicate", "-once", "-config", str(write_config(tmp_path / "replicate.yml", db, replica))))
    out = tmp_path / "follower.db"

    def killed(*_: object) -> None:
        raise Killed

    monkeypatch.setattr(follow, "write_txid", killed)
    with pytest.raises(Killed):
        await follow.restore_for_follow(new_client({"url": f"file://{replica}"}), out, parallelism=2,
                                        integrity_check="none", if_exists=follow.IfExists.FAIL)
    assert not out.exists(), "a database was installed without its -txid file"
    monkeypatch.undo()
    txid = await follow.restore_for_follow(new_client({"url": f"file://{replica}"}), out, parallelism=2,
                                           integrity_check="none", if_exists=follow.IfExists.FAIL)
    assert txid > 0 and follow.read_txid(out) == txid
