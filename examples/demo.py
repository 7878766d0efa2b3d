"""Lifeboat in one minute: replicate, lose the database, restore, compare.

Runs the real CLI as separate processes, exactly as a user would, against a directory replica.
Usage: python examples/demo.py [WORKDIR]
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIFEBOAT = [sys.executable, "-m", "lifeboat.agent.cli"]


def rows(path: Path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, note FROM notes ORDER BY id").fetchall()
    finally:
        conn.close()


def main() -> int:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="lifeboat-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    db, replica = work / "app.db", work / "replica"
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        p.unlink(missing_ok=True)
    shutil.rmtree(replica, ignore_errors=True)
    shutil.rmtree(work / ".app.db-litestream", ignore_errors=True)

    print(f"1. creating {db} in WAL mode")
    app = sqlite3.connect(db)
    app.execute("PRAGMA journal_mode=wal")
    app.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, note TEXT NOT NULL)")
    app.commit()

    url = f"file://{replica}"
    print(f"2. lifeboat replicate {db} {url}")
    agent = subprocess.Popen([*LIFEBOAT, "replicate", str(db), url])
    try:
        print("3. the application commits 500 rows while the agent replicates")
        for i in range(500):
            app.execute("INSERT INTO notes (note) VALUES (?)", (f"note #{i} written at {time.time():.3f}",))
            app.commit()
            if i % 100 == 99:
                time.sleep(0.05)
        expected = rows(db)
        app.close()
        time.sleep(0.5)
    finally:
        agent.send_signal(signal.SIGTERM)  # final sync, then exit 0
        code = agent.wait(30)
    if code != 0:
        print(f"agent exited with {code}", file=sys.stderr)
        return 1
    files = sorted((replica / "ltx" / "0").iterdir())
    print(f"   replica holds {len(files)} LTX file(s) in {replica / 'ltx' / '0'}")

    print("4. disaster: the database and its WAL are deleted")
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        p.unlink(missing_ok=True)
    shutil.rmtree(work / ".app.db-litestream", ignore_errors=True)

    print(f"5. lifeboat restore -o {db} {url}")
    subprocess.run([*LIFEBOAT, "restore", "-integrity-check", "full", "-o", str(db), url], check=True)
    restored = rows(db)
    same = restored == expected
    print(f"6. restored {len(restored)} of {len(expected)} rows: {'identical' if same else 'DIFFERENT'}")
    if same:
        print(f"   last row: {restored[-1]}")
    print(f"   (files kept in {work})")
    return 0 if same else 1


if __name__ == "__main__":
    os.environ.setdefault("LOG_LEVEL", "warning")
    sys.exit(main())
