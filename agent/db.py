"""`Database`: follows one SQLite database's WAL and turns each sync into an L0 LTX file.

Blocking by design (file reads, sqlite3): the store runs `sync` and `checkpoint` in a worker thread,
one at a time per database.

How continuity is kept (see DESIGN.md §2; the proven state is one `continuity.Continuity` value):
- A read transaction of ours is open at every moment (released only under our own write barrier,
  when no connection can write or restart the WAL), so frames we scanned stay the frames we read.
- Our checkpoint syncs to the WAL's end under that barrier and copies it (PASSIVE). When every frame
  was copied, our read is re-opened on read mark 0, which blocks every backfill: the database file
  then stays the last L0 file's state, and whatever WAL generation the application starts next
  continues the history from its first frame. We never write to the database to restart the WAL:
  with nothing committed by the application, nothing reaches the replica.
- A checkpoint a reader blocks (fewer frames copied than the WAL holds) changes nothing and is
  retried on the checkpoint-interval schedule.
- At a graceful stop the database's checksum is recorded next to the L0 files; when SQLite then
  removes the WAL, the next start compares it with the database file instead of re-shipping it.
- Anything else (other salts while pinned on a generation, an unreadable previous frame, a last page
  not in the last LTX file) means continuity cannot be proven: the next L0 file is a full snapshot.
"""

from __future__ import annotations

import enum
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
from .continuity import Continuity, FromFile, Resume, Seal, SnapshotRequired, database_checksum, ltx_file_checksum
from .pagemap import PageMap
from .sqlite import (
    WAL_FRAME_HEADER_SIZE,
    WAL_HEADER_SIZE,
    SQLiteFormatError,
    WalHeader,
    lock_pgno,
    parse_database_header,
    parse_wal_header,
    published_frames,
    scan_frames,
)
from .storage import format_ltx_name, parse_ltx_name
from .storage.file import fsync_dir

log = logging.getLogger("lifeboat.db")

SCAN_WINDOW = 4 * 1024 * 1024  # WAL bytes read and checksummed at a time
WAL_INDEX_HEADER_SIZE = 48  # struct WalIndexHdr, stored twice at the start of the -shm file
INDEX_READ_ATTEMPTS = 20
IN_FLUX = -1
CKPT_INFO_OFFSET = 2 * WAL_INDEX_HEADER_SIZE  # struct WalCkptInfo follows the two index headers
# In WalCkptInfo: nBackfill (4), aReadMark[5] (20), aLock[8] (8), then nBackfillAttempted (4).
BACKFILL_ATTEMPTED_AT = 32
CKPT_INFO_SIZE = 36
BLOCKED_RETRY = 60.0  # seconds between retries of an unfinished checkpoint when checkpoint-interval is 0

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
    seconds: float = 0.0  # how long `Database.sync` took


class Peek(enum.Enum):
    """What `Database.peek` saw."""

    IDLE = "idle"
    UNPUBLISHED = "unpublished"


@dataclass(frozen=True)
class _Index:
    max_frame: int  # frames SQLite considers committed
    backfilled: int  # nBackfill: frames already copied into the database file
    salt_bytes: bytes
    attempted: int = 0  # nBackfillAttempted: set before a checkpoint starts copying frames


@dataclass
class _WalScan:
    latest: PageMap  # pgno -> WAL file offset of its newest committed page data
    commit: int  # database size in pages at the last commit frame (0: no commit found)
    end: int  # offset just past the last commit frame
    checksum: tuple[int, int]  # running checksum at `end`
    more: bool  # stopped at max_bytes: more committed frames may follow


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
        self.state: Continuity = SnapshotRequired("no local L0 files")
        self._ckpt_base: Resume | None = None  # the position our last complete checkpoint copied
        self._db_fd = -1
        self._wal_fd = -1
        self._shm_fd = -1
        self._rconn: sqlite3.Connection | None = None
        self._wconn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._last_checkpoint = time.monotonic()
        self._synced_since_checkpoint = False
        self._deferred = False  # the last checkpoint could not finish: wait for the schedule
        self._blocked_since: float | None = None  # a reader has kept checkpoints from finishing

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
        self._create_litestream_tables()
        # Pinned from here on. On an empty or fully copied WAL this read sits on read mark 0, which
        # blocks every backfill: the database file cannot change while we hold it.
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

    def _create_litestream_tables(self) -> None:
        """The same tables Litestream creates, so the Go binary can take over this database: both in
        one transaction (one commit, one fsync of the WAL, where two cost a thousand databases' cold
        start two), and a deferred one, so tables already there take no write lock."""
        assert self._wconn is not None
        self._wconn.execute("BEGIN")
        try:
            self._wconn.execute("CREATE TABLE IF NOT EXISTS _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER)")
            self._wconn.execute("CREATE TABLE IF NOT EXISTS _litestream_lock (id INTEGER)")
            self._wconn.execute("COMMIT")
        except BaseException:
            if self._wconn.in_transaction:
                self._wconn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Record the database's checksum for the next start, then release the read transaction,
        connections and descriptors."""
        with self._lock:
            if self._wconn is not None and self.pos:
                self._seal()
            self._close()

    def reopen(self) -> None:
        """Follow the file now at the path (the old one was replaced): close, then open it afresh.

        Local state then decides as at any start: the new file continues the history only if that
        can be proven, otherwise the next sync writes a snapshot of it. Nothing is sealed: the old
        file is no longer the database.
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

    def _seal(self) -> None:
        """Record the checksum of the state of the newest L0 file, when the database is at it.

        Under a write barrier, so the state cannot move on; only when our position is the WAL's
        end (this never writes an L0 file: the final sync has already shipped what there was).
        Reading the database file overlaid with every frame up to that end is consistent although
        a checkpoint may copy frames meanwhile: our read pins the WAL and no frame past its end
        exists, so every page a backfill may rewrite is taken from the WAL instead.
        """
        assert self._wconn is not None
        try:
            self._wconn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            log.info("%s: no checksum recorded at stop (%s): the next start may write a snapshot", self.path, exc)
            return
        try:
            if isinstance(self.state, SnapshotRequired):
                return
            hdr = self._read_wal_header()
            latest = PageMap()
            if hdr is not None:
                pos = self._position(hdr)
                if pos is None or self._index_end(hdr) != pos.offset:
                    return  # committed after the final sync: the next start follows the WAL instead
                latest = self._scan_wal(hdr, WAL_HEADER_SIZE, hdr.checksum, stop_at=pos.offset).latest
            Seal(
                txid=self.pos,
                file_checksum=ltx_file_checksum(self.l0_path(self.pos)),
                page_size=self.page_size,
                commit=self.commit,
                checksum=database_checksum(self._full_pages(latest, self.commit)),
            ).write(self.meta_dir)
        except (OSError, DatabaseError) as exc:
            log.warning("%s: could not record the database checksum at stop: %s", self.path, exc)
        finally:
            self._wconn.execute("ROLLBACK")

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
        """Resume from the newest local L0 file when the WAL or the database file provably continues it."""
        seal = Seal.take(self.meta_dir)
        txids = self.local_l0_txids()
        if not txids:
            self.pos = 0
            self.state = SnapshotRequired("no local L0 files")
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
            self.state = SnapshotRequired(f"local state unusable: {exc}")
            return
        h = dec.header
        self.commit = h.commit
        if h.page_size != self.page_size:
            self.state = SnapshotRequired(f"page size changed from {h.page_size} to {self.page_size}")
            return
        pages = {want: page} if want is not None and page is not None else {}
        self.state = self._resume_in_wal(h, pages) or self._prove_file(h, seal)
        self._settle()

    def _resume_in_wal(self, h: ltx.Header, pages: dict[int, bytes]) -> Resume | None:
        """The WAL generation `h` was read from still holds its last frame, unchanged: go on after it."""
        wal_hdr = self._read_wal_header()
        if h.wal_offset == 0 or wal_hdr is None or (wal_hdr.salt1, wal_hdr.salt2) != (h.wal_salt1, h.wal_salt2):
            return None
        end = h.wal_offset + h.wal_size
        if end == WAL_HEADER_SIZE:
            return Resume(wal_hdr.salt1, wal_hdr.salt2, end, wal_hdr.checksum)
        fs = wal_hdr.frame_size
        prev = os.pread(self._wal_fd, fs, end - fs)
        if len(prev) != fs:
            return None
        pgno, _commit, s1, s2, c1, c2 = struct.unpack_from(">6I", prev)
        if (s1, s2) != (wal_hdr.salt1, wal_hdr.salt2) or pages.get(pgno) != prev[WAL_FRAME_HEADER_SIZE:]:
            return None
        return Resume(wal_hdr.salt1, wal_hdr.salt2, end, (c1, c2))

    def _prove_file(self, h: ltx.Header, seal: Seal | None) -> Continuity:
        """Whether the database file is the state of the newest L0 file `h` (SQLite removed the WAL).

        Proven after our read transaction pinned the WAL, never before: a checkpoint or WAL restart
        by the application between a proof and the pin would make the proof stale, while after the
        pin no restart is possible and only frames up to our read mark can still be copied into the
        file. A match is then sound: every page we read is either the page the current generation
        started on or one a backfill copied from a frame of it, so the file overlaid with all of the
        generation's frames is the current database whatever we read. Intermediate TXIDs are only
        real states when no frame had been copied, hence `nBackfill == 0`, read after the file: it
        only grows within a generation, so zero then means zero throughout the read.
        """
        if seal is None:
            return SnapshotRequired("the WAL does not continue the newest L0 file and no checksum was "
                                    "recorded at the last stop (a crash, or a stop that could not record it)")
        if (seal.txid, seal.page_size, seal.commit) != (self.pos, self.page_size, h.commit) or (
            seal.file_checksum != ltx_file_checksum(self.l0_path(self.pos))
        ):
            return SnapshotRequired(f"the checksum recorded at the last stop is for TXID {seal.txid}, "
                                    f"not the newest L0 file {self.pos}")
        try:
            checksum = database_checksum(self._full_pages({}, h.commit))
        except DatabaseError:
            return SnapshotRequired("the database file is shorter than the newest L0 file's state")
        index = self._read_index()
        if checksum != seal.checksum:
            return SnapshotRequired("the database file changed while the agent was stopped")
        if not isinstance(index, _Index):
            return SnapshotRequired("no readable wal-index to prove the database file against")
        if index.backfilled:
            return SnapshotRequired("frames of the new WAL were copied into the database file during the proof")
        wal_hdr = self._read_wal_header()
        if index.max_frame == 0 or wal_hdr is None:
            return FromFile()  # an empty WAL: our read sits on read mark 0
        return Resume(wal_hdr.salt1, wal_hdr.salt2, WAL_HEADER_SIZE, wal_hdr.checksum)

    def _settle(self) -> None:
        """A position at the end of a WAL whose every frame is in the database file (copied by
        anyone's checkpoint): the file is that position's state. Our read then either sits on read
        mark 0 (it began with everything copied, and no backfill has been possible since) or pins
        this very generation (a backfill never passes a reader's mark), so any new generation
        continues the history too, and nothing is left for our checkpoint to copy."""
        st = self.state
        if not isinstance(st, Resume):
            return
        index = self._read_index()
        frames = (st.offset - WAL_HEADER_SIZE) // (WAL_FRAME_HEADER_SIZE + self.page_size)
        if isinstance(index, _Index) and index.salt_bytes == struct.pack(">2I", *st.salts) and (
            index.max_frame == index.backfilled == frames
        ):
            self._ckpt_base = st
            self.state = FromFile(prior=st)

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
            self.state = SnapshotRequired(f"the replica is ahead of local state (TXID {remote_txid})")

    # ---- syncing ---------------------------------------------------------------------------

    def _index_end(self, wal_hdr: WalHeader) -> int | None:
        """The WAL offset past the last frame SQLite considers committed, from the -shm wal-index.

        A writer killed between writing its commit frame and publishing it in the wal-index leaves
        a frame that checksums fine but that SQLite never committed (the next writer overwrites
        it): only the index says where committed frames end. None when there is no index to read;
        IN_FLUX while a writer is updating it (its two header copies differ) or has restarted the
        WAL without publishing yet.
        """
        index = self._read_index()
        if not isinstance(index, _Index):
            return index
        if index.salt_bytes != wal_hdr.salt_bytes:
            return IN_FLUX
        return WAL_HEADER_SIZE + index.max_frame * wal_hdr.frame_size

    def _read_index(self) -> _Index | int | None:
        """The wal-index header (when its two copies agree) and nBackfill; None without an index."""
        for _ in range(INDEX_READ_ATTEMPTS):
            index = self._read_index_once()
            if index != IN_FLUX:
                return index
            time.sleep(0.0005)
        return IN_FLUX

    def _read_index_once(self) -> _Index | int | None:
        """One read of the wal-index header: IN_FLUX while its two copies differ (a writer is updating it)."""
        if self._shm_fd < 0:
            return None
        head = os.pread(self._shm_fd, CKPT_INFO_OFFSET + CKPT_INFO_SIZE, 0)
        if len(head) < CKPT_INFO_OFFSET + CKPT_INFO_SIZE:
            return None
        first, second = head[:WAL_INDEX_HEADER_SIZE], head[WAL_INDEX_HEADER_SIZE:CKPT_INFO_OFFSET]
        if first != second or first[12] != 1:
            return IN_FLUX
        (max_frame,) = struct.unpack_from("=I", first, 16)
        (backfill,) = struct.unpack_from("=I", head, CKPT_INFO_OFFSET)
        (attempted,) = struct.unpack_from("=I", head, CKPT_INFO_OFFSET + BACKFILL_ATTEMPTED_AT)
        return _Index(max_frame, backfill, first[32:40], attempted)

    def peek(self) -> Peek | None:
        """What a sync would find, when two small reads can tell (no lock, no sleep, no thread):
        `Peek.IDLE` when the WAL holds nothing past our position, `Peek.UNPUBLISHED` when a writer
        has frames there that the wal-index does not publish yet (a sync would write nothing and
        report `unpublished`). None when only a sync can tell: another WAL generation, an index
        being rewritten or absent, or a position not in the WAL."""
        st = self.state
        if not isinstance(st, Resume) or self._wal_fd < 0 or self.page_size == 0:
            return None
        index = self._read_index_once()
        if not isinstance(index, _Index) or index.salt_bytes != st.salt_bytes:
            return None
        end = WAL_HEADER_SIZE + index.max_frame * (WAL_FRAME_HEADER_SIZE + self.page_size)
        if end != st.offset:
            return None
        head = os.pread(self._wal_fd, WAL_FRAME_HEADER_SIZE, end)
        # Frames left from before a WAL restart carry older salts: only this generation's count.
        if len(head) == WAL_FRAME_HEADER_SIZE and head[8:16] == index.salt_bytes:
            return Peek.UNPUBLISHED
        return Peek.IDLE

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
        t0 = time.monotonic()
        with self._lock:
            result = self._sync()
        result.seconds = time.monotonic() - t0
        return result

    def _sync(self) -> SyncResult:
        result = SyncResult()
        while True:
            more = self._sync_once(result)
            if not more:
                break
        if result.txids:
            self._synced_since_checkpoint = True
        self._settle()
        return result

    def _sync_once(self, result: SyncResult) -> bool:
        wal_hdr = self._read_wal_header()
        bound = None
        if wal_hdr is not None:
            if wal_hdr.page_size != self.page_size:
                raise DatabaseError(
                    f"{self.wal_path}: page size changed from {self.page_size} to {wal_hdr.page_size}"
                )
            bound = self._index_end(wal_hdr)
            if bound == IN_FLUX:
                result.unpublished = True
                return False
        if self.pos == 0 or isinstance(self.state, SnapshotRequired):
            self._write_snapshot(wal_hdr, result, bound)
            return False
        if wal_hdr is None:
            return False  # an empty or missing WAL: nothing committed since
        pos = self._position(wal_hdr)
        if pos is None:
            self.state = SnapshotRequired("the WAL was restarted outside a checkpoint of ours")
            self._write_snapshot(wal_hdr, result, bound)
            return False
        scan = self._scan_wal(
            wal_hdr,
            pos.offset,
            pos.checksum,
            stop_at=bound,
            max_bytes=self.opts.max_sync_wal_bytes,
            published=bound is not None,
        )
        if not scan.more and bound is not None and self._frame_written_at(wal_hdr, bound):
            result.unpublished = True
        if scan.commit == 0:
            return False
        self._write_incremental(wal_hdr, pos, scan, result)
        return scan.more

    def _position(self, wal_hdr: WalHeader) -> Resume | None:
        """Where the WAL generation `wal_hdr` continues our history, or None if it provably does not."""
        st = self.state
        salts = (wal_hdr.salt1, wal_hdr.salt2)
        if isinstance(st, Resume):
            return st if st.salts == salts else None
        if isinstance(st, FromFile):
            if st.prior is not None and st.prior.salts == salts:
                return st.prior
            return Resume(wal_hdr.salt1, wal_hdr.salt2, WAL_HEADER_SIZE, wal_hdr.checksum)
        return None

    def _write_incremental(self, wal_hdr: WalHeader, pos: Resume, scan: _WalScan, result: SyncResult) -> None:
        ps = self.page_size
        latest, commit, end = scan.latest, scan.commit, scan.end
        lock = lock_pgno(ps)

        def wanted() -> Iterator[int]:
            # The pages the frames carry, then every page past the previous size: those no frame
            # carries come from the database file. Ascending, without building a set of them all.
            grown_from = min(self.commit, commit) + 1
            for pgno in latest.pgnos():
                if pgno >= grown_from:
                    break
                yield pgno
            yield from range(grown_from, commit + 1)

        def pages() -> Iterator[tuple[int, bytes]]:
            for pgno in wanted():
                if pgno == lock:
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
        self.state = Resume(wal_hdr.salt1, wal_hdr.salt2, end, scan.checksum)
        self.commit = commit
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
        published: bool = False,
    ) -> _WalScan:
        """Committed frames from `start` (whose preceding checksum is `seed`), in bounded windows.

        Only offsets are kept, never page data, so memory stays small whatever the WAL's size;
        a transaction larger than a window is simply followed into the next one. Stops at the WAL's
        valid end, at `stop_at`, or at the first commit boundary past `max_bytes`. `published`:
        `stop_at` is the wal-index's end of committed frames, so the frames before it are taken as
        SQLite's readers take them, without recomputing their checksums (:func:`published_frames`).
        """
        scan = _WalScan(latest=PageMap(), commit=0, end=start, checksum=seed, more=False)
        pending = PageMap()
        fs = wal_hdr.frame_size
        window = max(fs, SCAN_WINDOW // fs * fs)
        offset = start
        while stop_at is None or offset < stop_at:
            want = window if stop_at is None else min(window, stop_at - offset)
            data = os.pread(self._wal_fd, want, offset)
            frames = published_frames(data, offset, wal_hdr) if published else scan_frames(data, offset, wal_hdr, seed)
            for fr in frames:
                pending.set(fr.pgno, fr.offset + WAL_FRAME_HEADER_SIZE)
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

    def _full_pages(self, latest: PageMap, commit: int) -> Iterator[tuple[int, bytes]]:
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
        if isinstance(self.state, SnapshotRequired):
            log.info("%s: writing a full snapshot: %s", self.path, self.state.reason)
        latest = PageMap()
        end, checksum, commit = WAL_HEADER_SIZE, (0, 0), 0
        if wal_hdr is not None:
            scan = self._scan_wal(
                wal_hdr, WAL_HEADER_SIZE, wal_hdr.checksum, stop_at=bound, published=bound is not None
            )
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
        # Without a WAL our read sits on read mark 0 and the file is pinned: any generation continues.
        self.state = Resume(salts[0], salts[1], end, checksum) if wal_hdr else FromFile()
        self.commit = commit
        result.txids.append(txid)
        result.snapshot = True
        result.wal_bytes += end - WAL_HEADER_SIZE

    def snapshot_to(self, out: BinaryIO) -> ltx.Header:
        """Write the database as of the current position as an L9 snapshot (`1-<pos>`).

        Syncs first, then reads the database file overlaid with the WAL up to the synced offset,
        holding only the agent's own sync lock, so the application keeps writing meanwhile. Pages
        that no frame up to that offset carries come from the database file; anyone's checkpoint
        may copy frames into it while we read, which is harmless for frames up to our offset (we
        read those pages from the WAL) but not for later ones. So after the read the wal-index must
        show the same generation with no copy attempted past our offset; otherwise the snapshot is
        read again under a write barrier, where no frame past our offset can exist.
        """
        with self._lock:
            header = self._snapshot_once(out, barrier=False)
            if header is not None:
                return header
            log.info("%s: a checkpoint copied frames past the snapshot's position while it was read; "
                     "reading it again under a write barrier", self.path)
            assert self._wconn is not None
            self._wconn.execute("BEGIN IMMEDIATE")
            try:
                header = self._snapshot_once(out, barrier=True)
            finally:
                self._wconn.execute("ROLLBACK")
            assert header is not None
            return header

    def _snapshot_once(self, out: BinaryIO, *, barrier: bool) -> ltx.Header | None:
        self._sync()
        if self.pos == 0:
            raise DatabaseError(f"{self.path}: nothing to snapshot yet")
        latest = PageMap()
        wal_hdr = self._read_wal_header()
        pos = self._position(wal_hdr) if wal_hdr is not None else None
        salts, frames = None, 0
        if pos is not None and wal_hdr is not None:
            latest = self._scan_wal(wal_hdr, WAL_HEADER_SIZE, wal_hdr.checksum, stop_at=pos.offset).latest
            salts, frames = pos.salts, (pos.offset - WAL_HEADER_SIZE) // wal_hdr.frame_size
        header = ltx.Header(
            page_size=self.page_size,
            commit=self.commit,
            min_txid=1,
            max_txid=self.pos,
            timestamp=int(time.time() * 1000),
        )
        out.seek(0)
        out.truncate()
        ltx.encode(header, self._full_pages(latest, self.commit), out)
        return header if barrier or self._file_unchanged_past(salts, frames) else None

    def _file_unchanged_past(self, salts: tuple[int, int] | None, frames: int) -> bool:
        """Whether no checkpoint can have copied a frame past `frames` of generation `salts` (None:
        no generation at our position) into the database file: nBackfillAttempted is set before a
        copy starts and a WAL restart changes the salts."""
        index = self._read_index()
        if index is None:
            return True  # no wal-index: exclusive locking mode, no other connection checkpoints
        if not isinstance(index, _Index):
            return False
        if salts is None:
            return index.attempted == 0
        return index.salt_bytes == struct.pack(">2I", *salts) and index.attempted <= frames

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

    def _pending_frames(self) -> int:
        """Frames in L0 files that our last complete checkpoint did not copy into the database file."""
        st = self.state
        if not isinstance(st, Resume) or self.page_size == 0:
            return 0
        base = self._ckpt_base
        start = base.offset if base is not None and base.salts == st.salts else WAL_HEADER_SIZE
        return max(0, st.offset - start) // (WAL_FRAME_HEADER_SIZE + self.page_size)

    def checkpoint_mode_due(self) -> str | None:
        """Litestream's policy: TRUNCATE past truncate-page-n, PASSIVE past the minimum or on the interval.

        A checkpoint that could not finish (a reader, a lock) is retried on the interval only.
        """
        n = self._pending_frames()
        if n == 0:
            return None
        elapsed = time.monotonic() - self._last_checkpoint
        if self._deferred and elapsed < (self.opts.checkpoint_interval or BLOCKED_RETRY):
            return None
        if self.opts.truncate_page_n and n >= self.opts.truncate_page_n:
            return "TRUNCATE"
        if n >= self.opts.min_checkpoint_page_count:
            return "PASSIVE"
        if self.opts.checkpoint_interval and self._synced_since_checkpoint and elapsed >= self.opts.checkpoint_interval:
            return "PASSIVE"
        return None

    def checkpoint_blocked_seconds(self) -> float:
        """How long readers have kept checkpoints from copying the whole WAL (0: they do not)."""
        return 0.0 if self._blocked_since is None else time.monotonic() - self._blocked_since

    def checkpoint(self, mode: str = "PASSIVE") -> SyncResult:
        """Copy what L0 files hold into the database file; never writes to the database.

        Under a write barrier (an open write transaction of ours, so nothing can be appended or
        restart the WAL) sync to the WAL's end, release our read, run a PASSIVE checkpoint, and
        pin again before the barrier lifts. If the checkpoint copied every frame, that new read
        sits on read mark 0, which every backfill needs exclusively: the database file stays the
        state of our newest L0 file, and the generation the application's next write starts (any
        salts, SQLite's own restart) continues the history from its first frame. If a reader kept
        some frames from being copied, nothing changed; the attempt is retried on the schedule.
        TRUNCATE then also asks SQLite to restart and truncate the WAL, without waiting for anyone.
        Raises sqlite3.OperationalError when the application holds the write lock past busy-timeout.
        """
        with self._lock:
            assert self._wconn is not None and self._rconn is not None
            self._last_checkpoint = time.monotonic()
            self._deferred = True  # until this attempt provably finishes
            result = self._sync()
            self._wconn.execute("BEGIN IMMEDIATE")
            try:
                self._merge(result, self._sync())
                wal_hdr = self._read_wal_header()
                pos = self._position(wal_hdr) if wal_hdr is not None else None
                synced = 0 if pos is None else (pos.offset - WAL_HEADER_SIZE) // wal_hdr.frame_size
                self._end_read()
                try:
                    _busy, log_frames, copied = self._rconn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                finally:
                    self._begin_read()
            finally:
                self._wconn.execute("ROLLBACK")
            if log_frames >= 0 and log_frames != synced:
                self.state = SnapshotRequired(f"a checkpoint saw {log_frames} WAL frames, L0 files hold {synced}")
            elif log_frames < 0 or copied < log_frames:
                self._note_blocked(copied, log_frames)
            else:
                if isinstance(self.state, Resume):
                    self._ckpt_base = self.state
                    self.state = FromFile(prior=self.state)
                if mode == "TRUNCATE":
                    self._truncate_wal()
                self._note_blocked(None, log_frames)
                self._deferred = False
                self._synced_since_checkpoint = False
            self._merge(result, self._sync())
            return result

    def _truncate_wal(self) -> None:
        """Restart and truncate the fully copied WAL, unless a reader or writer is in the way."""
        assert self._wconn is not None
        self._wconn.execute("PRAGMA busy_timeout = 0")
        try:
            self._wconn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            self._wconn.execute(f"PRAGMA busy_timeout = {int(self.opts.busy_timeout * 1000)}")

    def _note_blocked(self, copied: int | None, log_frames: int) -> None:
        """Say once that a reader blocks checkpoints, and once that it no longer does."""
        now = time.monotonic()
        if copied is not None and self._blocked_since is None:
            self._blocked_since = now
            log.warning(
                "%s: a reader is blocking checkpoints (%d of %d WAL frames copied); retrying every %gs, "
                "the WAL grows meanwhile",
                self.path, max(copied, 0), max(log_frames, 0), self.opts.checkpoint_interval or BLOCKED_RETRY,
            )
        elif copied is None and self._blocked_since is not None:
            log.info("%s: checkpoints no longer blocked after %.1fs", self.path, now - self._blocked_since)
            self._blocked_since = None

    @staticmethod
    def _merge(into: SyncResult, more: SyncResult) -> None:
        into.txids += more.txids
        into.wal_bytes += more.wal_bytes
        into.snapshot = into.snapshot or more.snapshot
