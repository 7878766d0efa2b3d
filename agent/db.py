"""`Database`: follows one SQLite database's WAL and turns each sync into an L0 LTX file.

Blocking by design (file reads, sqlite3): the store runs `sync` and `checkpoint` in a worker thread,
one at a time per database.

How continuity is kept (see DESIGN.md §2):
- A long-running read transaction pins the WAL, so no other connection can restart it under us.
- Only our own checkpoint releases it, and does so after syncing to the WAL's end under a write
  barrier; exactly one WAL restart may follow, detected by salt1 advancing by one.
- Any other change of salts, an unreadable previous frame, or a last page that is not in the last
  LTX file means continuity cannot be proven: the next L0 file is then a full snapshot.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from . import ltx
from .sqlite import (
    WAL_FRAME_HEADER_SIZE,
    WAL_HEADER_SIZE,
    SQLiteFormatError,
    WalHeader,
    lock_pgno,
    parse_database_header,
    parse_wal_header,
    scan_frames,
)
from .storage import format_ltx_name, parse_ltx_name
from .storage.file import fsync_dir

log = logging.getLogger("lifeboat.db")

SCAN_WINDOW = 4 * 1024 * 1024  # WAL bytes read and checksummed at a time
WAL_INDEX_HEADER_SIZE = 48  # struct WalIndexHdr, stored twice at the start of the -shm file
INDEX_READ_ATTEMPTS = 20
IN_FLUX = -1

META_SUFFIX = "-litestream"


class DatabaseError(RuntimeError):
    """The database cannot be replicated as it is; the message says why and where."""


def default_meta_dir(db_path: str) -> str:
    """`<dir>/.<name>-litestream`: the same place Litestream uses, so either tool can take over."""
    p = Path(db_path)
    return str(p.parent / f".{p.name}{META_SUFFIX}")


@dataclass
class DatabaseOptions:
    """Per-database tuning, Litestream's names and defaults."""

    meta_path: str | None = None
    busy_timeout: float = 1.0
    min_checkpoint_page_count: int = 1000
    truncate_page_n: int = 121359
    checkpoint_interval: float = 60.0
    max_sync_wal_bytes: int = 64 * 1024 * 1024


@dataclass
class SyncResult:
    """What one sync produced."""

    txids: list[int] = field(default_factory=list)
    wal_bytes: int = 0
    snapshot: bool = False
    # The WAL held frames of this generation past what the wal-index published (or the index was
    # being rewritten): a writer is mid-commit, and its last write may already have been the event
    # that woke us, so nothing else will. The caller looks again shortly.
    unpublished: bool = False


@dataclass
class _WalScan:
    latest: dict[int, int]  # pgno -> WAL file offset of its newest committed page data
    commit: int  # database size in pages at the last commit frame (0: no commit found)
    end: int  # offset just past the last commit frame
    checksum: tuple[int, int]  # running checksum at `end`
    more: bool  # stopped at max_bytes: more committed frames may follow


@dataclass
class _WalPosition:
    salt1: int
    salt2: int
    offset: int
    checksum: tuple[int, int]


class Database:
    """One replicated database and its local meta directory of L0 files."""

    def __init__(self, path: str, options: DatabaseOptions | None = None) -> None:
        self.path = os.path.abspath(path)
        self.wal_path = self.path + "-wal"
        self.opts = options or DatabaseOptions()
        self.meta_dir = Path(self.opts.meta_path or default_meta_dir(self.path))
        self.l0_dir = self.meta_dir / "ltx" / "0"
        self.pos = 0  # TXID of the newest local L0 file
        self.page_size = 0
        self.commit = 0
        self.last_wal_offset = 0
        self._wal: _WalPosition | None = None
        self._restart_allowed = False
        self._force_snapshot = False
        self._db_fd = -1
        self._wal_fd = -1
        self._shm_fd = -1
        self._rconn: sqlite3.Connection | None = None
        self._wconn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._last_checkpoint = time.monotonic()
        self._synced_since_checkpoint = False

    # ---- opening ---------------------------------------------------------------------------

    def validate(self) -> None:
        """Check, without writing anything, that the file is a SQLite database in WAL mode."""
        if not os.path.exists(self.path):
            raise DatabaseError(f"{self.path}: database does not exist")
        with open(self.path, "rb") as f:
            head = f.read(100)
        if len(head) == 0:
            raise DatabaseError(f"{self.path}: database is empty (not yet initialised by the application)")
        try:
            hdr = parse_database_header(head, self.path)
        except SQLiteFormatError as exc:
            raise DatabaseError(str(exc)) from None
        if not hdr.is_wal:
            raise DatabaseError(
                f"{self.path}: database is not in WAL mode (run PRAGMA journal_mode=wal in the application)"
            )
        self.page_size = hdr.page_size

    def open(self) -> None:
        """Validate the database, connect, pin the WAL, and load local state."""
        self.validate()
        # Our own descriptor stays open for the agent's lifetime: closing any descriptor of a file
        # drops every POSIX lock this process holds on it, including SQLite's.
        self._db_fd = os.open(self.path, os.O_RDONLY)
        timeout = self.opts.busy_timeout
        self._wconn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        self._rconn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        for conn in (self._wconn, self._rconn):
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        mode = self._wconn.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            raise DatabaseError(f"{self.path}: database is not in WAL mode (journal_mode={mode})")
        # The same tables Litestream creates, so the Go binary can take over this database.
        self._wconn.execute("CREATE TABLE IF NOT EXISTS _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER)")
        self._wconn.execute("CREATE TABLE IF NOT EXISTS _litestream_lock (id INTEGER)")
        self._wconn.execute(f"PRAGMA journal_size_limit = {4 * 1024 * 1024}")
        self._ensure_wal_has_frames()
        self._begin_read()
        self._wal_fd = os.open(self.wal_path, os.O_RDONLY)
        # Held open like the others: closing any descriptor of the -shm file would drop SQLite's
        # read locks in it. Absent only with locking_mode=EXCLUSIVE (heap-memory index).
        try:
            self._shm_fd = os.open(self.path + "-shm", os.O_RDONLY)
        except FileNotFoundError:
            self._shm_fd = -1
        self.meta_dir.mkdir(parents=True, exist_ok=True)
        self.l0_dir.mkdir(parents=True, exist_ok=True)
        self._remove_tmp_files()
        self._load_local_state()

    def close(self) -> None:
        """Release the read transaction, connections and descriptors."""
        with self._lock:
            self._close()

    def reopen(self) -> None:
        """Follow the file now at the path (the old one was replaced): close, then open it afresh.

        Local state then decides as at any start: the new file continues the history only if that
        can be proven, otherwise the next sync writes a snapshot of it.
        """
        with self._lock:
            self._close()
            self.open()

    def file_identity(self) -> tuple[int, int]:
        """(device, inode) of the file this agent follows."""
        st = os.fstat(self._db_fd)
        return st.st_dev, st.st_ino

    def _close(self) -> None:
        for conn in (self._rconn, self._wconn):
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
        self._rconn = self._wconn = None
        for fd in (self._wal_fd, self._db_fd, self._shm_fd):
            if fd >= 0:
                os.close(fd)
        self._wal_fd = self._db_fd = self._shm_fd = -1

    def _bump_seq(self) -> None:
        assert self._wconn is not None
        self._wconn.execute(
            "INSERT INTO _litestream_seq (id, seq) VALUES (1, 1) ON CONFLICT(id) DO UPDATE SET seq = seq + 1"
        )

    def _ensure_wal_has_frames(self) -> None:
        # A read transaction on an empty WAL reads the database file only and does not pin the WAL.
        try:
            size = os.path.getsize(self.wal_path)
        except FileNotFoundError:
            size = 0
        if size <= WAL_HEADER_SIZE:
            self._bump_seq()

    def _begin_read(self) -> None:
        assert self._rconn is not None
        self._rconn.execute("BEGIN")
        self._rconn.execute("SELECT COUNT(1) FROM _litestream_seq").fetchone()

    def _end_read(self) -> None:
        assert self._rconn is not None
        if self._rconn.in_transaction:
            self._rconn.execute("ROLLBACK")

    def _remove_tmp_files(self) -> None:
        for entry in os.scandir(self.l0_dir):
            if entry.name.endswith(".tmp"):
                os.unlink(entry.path)

    def local_l0_txids(self) -> list[int]:
        """TXIDs of the local L0 files (all named N-N), ascending."""
        out = []
        for entry in os.scandir(self.l0_dir):
            txids = parse_ltx_name(entry.name)
            if txids is not None:
                out.append(txids[1])
        return sorted(out)

    def l0_path(self, txid: int) -> Path:
        return self.l0_dir / format_ltx_name(txid, txid)

    def _load_local_state(self) -> None:
        """Resume from the newest local L0 file when the WAL provably continues from it."""
        txids = self.local_l0_txids()
        if not txids:
            self.pos = 0
            self._wal = None
            return
        self.pos = txids[-1]
        path = self.l0_path(self.pos)
        try:
            with open(path, "rb") as f:
                dec = ltx.Decoder(f, str(path))
                want = self._last_frame_pgno(dec.header)
                # Only the page the resume check needs stays in memory: a full-snapshot L0 file
                # can be as large as the database.
                page = None
                for pgno, data in dec.pages():
                    if pgno == want:
                        page = bytes(data)
        except ltx.LTXError as exc:
            log.warning("local state unusable, next sync writes a snapshot: %s", exc)
            self._force_snapshot = True
            return
        pages = {want: page} if page is not None else {}
        h = dec.header
        self.commit = h.commit
        self._wal = None
        self._force_snapshot = True
        if h.page_size != self.page_size or h.wal_offset == 0:
            return
        wal_hdr = self._read_wal_header()
        if wal_hdr is None or (wal_hdr.salt1, wal_hdr.salt2) != (h.wal_salt1, h.wal_salt2):
            return
        end = h.wal_offset + h.wal_size
        if end == WAL_HEADER_SIZE:
            self._wal = _WalPosition(wal_hdr.salt1, wal_hdr.salt2, end, wal_hdr.checksum)
            self._force_snapshot = False
            return
        fs = wal_hdr.frame_size
        prev = os.pread(self._wal_fd, fs, end - fs)
        if len(prev) != fs:
            return
        pgno, _commit, s1, s2, c1, c2 = struct.unpack_from(">6I", prev)
        if (s1, s2) != (wal_hdr.salt1, wal_hdr.salt2) or pages.get(pgno) != prev[WAL_FRAME_HEADER_SIZE:]:
            return
        self._wal = _WalPosition(wal_hdr.salt1, wal_hdr.salt2, end, (c1, c2))
        self._force_snapshot = False

    def _last_frame_pgno(self, h: ltx.Header) -> int | None:
        """The page number of the WAL frame just before `h`'s end, if the WAL still holds it."""
        if h.wal_offset == 0 or self.page_size == 0:
            return None
        wal_hdr = self._read_wal_header()
        if wal_hdr is None:
            return None
        end = h.wal_offset + h.wal_size
        if end <= WAL_HEADER_SIZE:
            return None
        head = os.pread(self._wal_fd, 4, end - wal_hdr.frame_size)
        return struct.unpack(">I", head)[0] if len(head) == 4 else None

    def set_replica_position(self, remote_txid: int) -> None:
        """The replica is ahead of local state (a restore, a wiped meta dir): continue above it."""
        with self._lock:
            if remote_txid <= self.pos:
                return
            for txid in self.local_l0_txids():
                os.unlink(self.l0_path(txid))
            fsync_dir(self.l0_dir)
            self.pos = remote_txid
            self._force_snapshot = True

    # ---- syncing ---------------------------------------------------------------------------

    def _index_end(self, wal_hdr: WalHeader) -> int | None:
        """The WAL offset past the last frame SQLite considers committed, from the -shm wal-index.

        A writer killed between writing its commit frame and publishing it in the wal-index leaves
        a frame that checksums fine but that SQLite never committed (the next writer overwrites
        it): only the index says where committed frames end. None when there is no index to read;
        IN_FLUX while a writer is updating it (its two header copies differ) or has restarted the
        WAL without publishing yet.
        """
        if self._shm_fd < 0:
            return None
        for _ in range(INDEX_READ_ATTEMPTS):
            head = os.pread(self._shm_fd, 2 * WAL_INDEX_HEADER_SIZE, 0)
            if len(head) < 2 * WAL_INDEX_HEADER_SIZE:
                return None
            first, second = head[:WAL_INDEX_HEADER_SIZE], head[WAL_INDEX_HEADER_SIZE:]
            if first == second and first[12] == 1:
                if first[32:40] != wal_hdr.salt_bytes:
                    return IN_FLUX
                (max_frame,) = struct.unpack_from("=I", first, 16)
                return WAL_HEADER_SIZE + max_frame * wal_hdr.frame_size
            time.sleep(0.0005)
        return IN_FLUX

    def _frame_written_at(self, wal_hdr: WalHeader, offset: int) -> bool:
        """Whether a frame of the current WAL generation (its salts) starts at `offset`.

        Frames left from before a WAL restart carry the older salts, so they do not count.
        """
        head = os.pread(self._wal_fd, WAL_FRAME_HEADER_SIZE, offset)
        return len(head) == WAL_FRAME_HEADER_SIZE and head[8:16] == wal_hdr.salt_bytes

    def _read_wal_header(self) -> WalHeader | None:
        return parse_wal_header(os.pread(self._wal_fd, WAL_HEADER_SIZE, 0))

    def sync(self) -> SyncResult:
        """Write every committed WAL change since the last sync as L0 files."""
        with self._lock:
            return self._sync()

    def _sync(self) -> SyncResult:
        result = SyncResult()
        while True:
            more = self._sync_once(result)
            if not more:
                break
        if result.txids:
            self._synced_since_checkpoint = True
        return result

    def _sync_once(self, result: SyncResult) -> bool:
        wal_hdr = self._read_wal_header()
        if wal_hdr is None:
            # An empty or missing WAL: everything is in the database file.
            if self.pos == 0 or self._force_snapshot:
                self._write_snapshot(None, result)
            return False
        if wal_hdr.page_size != self.page_size:
            raise DatabaseError(f"{self.wal_path}: page size changed from {self.page_size} to {wal_hdr.page_size}")
        bound = self._index_end(wal_hdr)
        if bound == IN_FLUX:
            result.unpublished = True
            return False
        pos = self._wal
        if self.pos == 0 or self._force_snapshot or pos is None:
            self._write_snapshot(wal_hdr, result, bound)
            return False
        if (wal_hdr.salt1, wal_hdr.salt2) != (pos.salt1, pos.salt2):
            restarts = (wal_hdr.salt1 - pos.salt1) & 0xFFFFFFFF
            if self._restart_allowed and restarts == 1:
                pos = _WalPosition(wal_hdr.salt1, wal_hdr.salt2, WAL_HEADER_SIZE, wal_hdr.checksum)
                self._wal = pos
            else:
                log.info("%s: WAL restarted outside a checkpoint of ours; writing a snapshot", self.path)
                self._write_snapshot(wal_hdr, result, bound)
                return False
        self._restart_allowed = False
        scan = self._scan_wal(
            wal_hdr, pos.offset, pos.checksum, stop_at=bound, max_bytes=self.opts.max_sync_wal_bytes
        )
        if not scan.more and bound is not None and self._frame_written_at(wal_hdr, bound):
            result.unpublished = True
        if scan.commit == 0:
            return False
        self._write_incremental(wal_hdr, pos, scan, result)
        return scan.more

    def _write_incremental(self, wal_hdr: WalHeader, pos: _WalPosition, scan: _WalScan, result: SyncResult) -> None:
        ps = self.page_size
        latest, commit, end = scan.latest, scan.commit, scan.end
        lock = lock_pgno(ps)

        def pages() -> Iterator[tuple[int, bytes]]:
            # Pages past the previous size that no frame carries come from the database file.
            grown = range(self.commit + 1, commit + 1) if commit > self.commit else range(0)
            for pgno in sorted(set(latest) | set(grown)):
                if pgno > commit or pgno == lock:
                    continue
                off = latest.get(pgno)
                yield pgno, (os.pread(self._wal_fd, ps, off) if off is not None else self._read_db_page(pgno))

        txid = self.pos + 1
        header = ltx.Header(
            page_size=ps,
            commit=commit,
            min_txid=txid,
            max_txid=txid,
            timestamp=int(time.time() * 1000),
            wal_offset=pos.offset,
            wal_size=end - pos.offset,
            wal_salt1=wal_hdr.salt1,
            wal_salt2=wal_hdr.salt2,
        )
        self._write_l0(header, pages())
        self._wal = _WalPosition(wal_hdr.salt1, wal_hdr.salt2, end, scan.checksum)
        self.commit = commit
        self.last_wal_offset = end
        result.txids.append(txid)
        result.wal_bytes += end - pos.offset

    def _read_db_page(self, pgno: int) -> bytes:
        ps = self.page_size
        data = os.pread(self._db_fd, ps, (pgno - 1) * ps)
        if len(data) != ps:
            raise DatabaseError(f"{self.path}: page {pgno} is beyond the end of the database file")
        return data

    def _scan_wal(
        self,
        wal_hdr: WalHeader,
        start: int,
        seed: tuple[int, int],
        *,
        stop_at: int | None = None,
        max_bytes: int | None = None,
    ) -> _WalScan:
        """Committed frames from `start` (whose preceding checksum is `seed`), in bounded windows.

        Only offsets are kept, never page data, so memory stays small whatever the WAL's size;
        a transaction larger than a window is simply followed into the next one. Stops at the WAL's
        valid end, at `stop_at`, or at the first commit boundary past `max_bytes`.
        """
        scan = _WalScan(latest={}, commit=0, end=start, checksum=seed, more=False)
        pending: dict[int, int] = {}
        fs = wal_hdr.frame_size
        window = max(fs, SCAN_WINDOW // fs * fs)
        offset = start
        while stop_at is None or offset < stop_at:
            want = window if stop_at is None else min(window, stop_at - offset)
            data = os.pread(self._wal_fd, want, offset)
            frames = scan_frames(data, offset, wal_hdr, seed)
            for fr in frames:
                pending[fr.pgno] = fr.offset + WAL_FRAME_HEADER_SIZE
                if fr.commit:
                    scan.latest.update(pending)
                    pending.clear()
                    scan.commit, scan.end, scan.checksum = fr.commit, fr.offset + fs, fr.checksum
            if len(frames) < len(data) // fs or len(data) < want:
                break
            offset += len(frames) * fs
            seed = frames[-1].checksum
            if max_bytes is not None and scan.end - start >= max_bytes:
                scan.more = True
                break
        return scan

    def _full_pages(self, latest: dict[int, int], commit: int) -> Iterator[tuple[int, bytes]]:
        """Every page 1..commit but the lock page: from the WAL where it has one, else the file."""
        ps = self.page_size
        lock = lock_pgno(ps)
        for pgno in range(1, commit + 1):
            if pgno == lock:
                continue
            wal_off = latest.get(pgno)
            if wal_off is not None:
                yield pgno, os.pread(self._wal_fd, ps, wal_off)
            else:
                yield pgno, self._read_db_page(pgno)

    def _write_snapshot(self, wal_hdr: WalHeader | None, result: SyncResult, bound: int | None = None) -> None:
        """A full-database L0 file at the next TXID: the database file overlaid with the whole WAL."""
        latest: dict[int, int] = {}
        end, checksum, commit = WAL_HEADER_SIZE, (0, 0), 0
        if wal_hdr is not None:
            scan = self._scan_wal(wal_hdr, WAL_HEADER_SIZE, wal_hdr.checksum, stop_at=bound)
            latest, commit, end, checksum = scan.latest, scan.commit, scan.end, scan.checksum
        if commit == 0:
            commit = os.fstat(self._db_fd).st_size // self.page_size
        if commit == 0:
            return
        txid = self.pos + 1
        salts = (wal_hdr.salt1, wal_hdr.salt2) if wal_hdr else (0, 0)
        header = ltx.Header(
            page_size=self.page_size,
            commit=commit,
            min_txid=txid,
            max_txid=txid,
            timestamp=int(time.time() * 1000),
            wal_offset=WAL_HEADER_SIZE if wal_hdr else 0,
            wal_size=end - WAL_HEADER_SIZE if wal_hdr else 0,
            wal_salt1=salts[0],
            wal_salt2=salts[1],
        )
        self._write_l0(header, self._full_pages(latest, commit))
        self._wal = _WalPosition(salts[0], salts[1], end, checksum) if wal_hdr else None
        self.commit = commit
        self.last_wal_offset = end
        self._force_snapshot = False
        self._restart_allowed = False
        result.txids.append(txid)
        result.snapshot = True
        result.wal_bytes += end - WAL_HEADER_SIZE

    def snapshot_to(self, out: BinaryIO) -> ltx.Header:
        """Write the database as of the current position as an L9 snapshot (`1-<pos>`).

        Syncs first, then reads the database file overlaid with the WAL up to the synced offset,
        holding only the agent's own sync lock: the application keeps writing meanwhile, and
        since no checkpoint of ours runs, the pages read stay consistent with that position.
        """
        with self._lock:
            self._sync()
            if self.pos == 0:
                raise DatabaseError(f"{self.path}: nothing to snapshot yet")
            latest: dict[int, int] = {}
            wal_hdr = self._read_wal_header()
            if (
                self._wal is not None
                and wal_hdr is not None
                and (wal_hdr.salt1, wal_hdr.salt2) == (self._wal.salt1, self._wal.salt2)
            ):
                latest = self._scan_wal(wal_hdr, WAL_HEADER_SIZE, wal_hdr.checksum, stop_at=self._wal.offset).latest
            header = ltx.Header(
                page_size=self.page_size,
                commit=self.commit,
                min_txid=1,
                max_txid=self.pos,
                timestamp=int(time.time() * 1000),
            )
            ltx.encode(header, self._full_pages(latest, self.commit), out)
            return header

    def _write_l0(self, header: ltx.Header, pages: Iterator[tuple[int, bytes | memoryview]]) -> None:
        path = self.l0_path(header.max_txid)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb", buffering=1 << 20) as f:
            ltx.encode(header, pages, f)
            f.flush()
            os.fsync(f.fileno())
        # No directory fsync: a rename lost in a power cut only makes this file vanish, and the
        # next start then finds local state behind the replica or the WAL, and writes a snapshot.
        # The replica's own write is fully durable.
        os.replace(tmp, path)
        self.pos = header.max_txid

    # ---- checkpointing ---------------------------------------------------------------------

    def wal_frame_count(self) -> int:
        """Frames in the WAL up to the last synced position."""
        if self.page_size == 0 or self._wal is None:
            return 0
        return (self._wal.offset - WAL_HEADER_SIZE) // (WAL_FRAME_HEADER_SIZE + self.page_size)

    def checkpoint_mode_due(self) -> str | None:
        """Litestream's policy: TRUNCATE past truncate-page-n, PASSIVE past the minimum or on the interval."""
        n = self.wal_frame_count()
        if self.opts.truncate_page_n and n >= self.opts.truncate_page_n:
            return "TRUNCATE"
        if n >= self.opts.min_checkpoint_page_count:
            return "PASSIVE"
        if (
            self.opts.checkpoint_interval
            and n > 1
            and self._synced_since_checkpoint
            and time.monotonic() - self._last_checkpoint >= self.opts.checkpoint_interval
        ):
            return "PASSIVE"
        return None

    def checkpoint(self, mode: str = "PASSIVE") -> SyncResult:
        """Checkpoint only what is already in L0 files, then restart the WAL ourselves.

        1. Under a write barrier (an open write transaction of ours) sync to the WAL's end and run
           a PASSIVE checkpoint: the application cannot append meanwhile, and the frame count the
           checkpoint reports must equal ours, or something was missed and a snapshot follows.
        2. In a fresh write transaction, sync again and bump `_litestream_seq`: if the WAL was fully
           copied, this write restarts it, and since we held the write lock from that last sync to
           the restart, the old WAL provably ended where our L0 files end. Only this restart (salt1
           one higher) is then accepted as continuous; any other restart forces a snapshot.
        TRUNCATE differs from PASSIVE in that our restart also shrinks the WAL file.
        """
        with self._lock:
            assert self._wconn is not None and self._rconn is not None
            result = self._sync()
            self._wconn.execute("BEGIN IMMEDIATE")
            try:
                self._merge(result, self._sync())
                synced_frames = self.wal_frame_count()
                self._end_read()
                _busy, log_frames, _done = self._rconn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except BaseException:
                self._wconn.execute("ROLLBACK")
                if not self._rconn.in_transaction:
                    self._begin_read()
                raise
            self._wconn.execute("ROLLBACK")
            try:
                if log_frames == synced_frames:
                    self._restart_wal(mode, result)
                elif log_frames >= 0:  # -1: the checkpoint did not run, nothing changed
                    log.warning("%s: checkpoint saw %d WAL frames, L0 files hold %d; writing a snapshot",
                                self.path, log_frames, synced_frames)
                    self._force_snapshot = True
            finally:
                if not self._rconn.in_transaction:
                    self._begin_read()
            self._merge(result, self._sync())
            self._last_checkpoint = time.monotonic()
            self._synced_since_checkpoint = False
            return result

    def _restart_wal(self, mode: str, result: SyncResult) -> None:
        """Sync and bump `_litestream_seq` in one write transaction, so a restart it causes is ours."""
        assert self._wconn is not None
        limit = 0 if mode == "TRUNCATE" else 4 * 1024 * 1024
        self._wconn.execute(f"PRAGMA journal_size_limit = {limit}")
        try:
            self._wconn.execute("BEGIN IMMEDIATE")
            before = self._wal
            self._merge(result, self._sync())
            if before is None or self._wal is None or self._wal.salt1 != before.salt1:
                # Restarted by someone else between the barrier and this transaction: the sync
                # above already wrote a snapshot (an unexpected restart), nothing left to prove.
                self._wconn.execute("ROLLBACK")
                return
            self._bump_seq()
            self._wconn.execute("COMMIT")
            self._restart_allowed = True
        finally:
            if self._wconn.in_transaction:
                self._wconn.execute("ROLLBACK")
            self._wconn.execute(f"PRAGMA journal_size_limit = {4 * 1024 * 1024}")

    @staticmethod
    def _merge(into: SyncResult, more: SyncResult) -> None:
        into.txids += more.txids
        into.wal_bytes += more.wal_bytes
        into.snapshot = into.snapshot or more.snapshot
