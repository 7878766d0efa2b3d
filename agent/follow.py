"""Follow mode (`restore -f`): after the restore, keep applying the replica's new LTX files.

Litestream's semantics: `<out>-txid` holds the last applied TXID (16 hex digits and a newline,
replaced atomically), a restart on an existing output resumes from it, L0 is polled from that
TXID on and a gap (L0 files compacted away before they were read) is bridged from L1..L8.

Readers of the output are SQLite connections, so each file is applied as SQLite itself would
commit a transaction in rollback-journal mode: under its EXCLUSIVE lock (the fcntl byte locks of
os_unix.c, which is what Litestream takes too), with the original pages saved first in a
`<out>-journal`. A reader never sees a half-applied TXID: while pages are written it cannot take
its SHARED lock, and if the follower dies mid-file the journal is hot, so the next connection
(or the resumed follower) rolls the database back to the last complete TXID. Page 1 is set to
rollback-journal mode, its change counter advanced (so readers drop their page cache) and its
size field set to the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sqlite3
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from . import ltx
from .progress import Transfer
from .restore import MAX_LEVEL, IfExists, NoBackupError, Report, RestoreError, download, list_levels, restore
from .storage import SNAPSHOT_LEVEL, FileInfo, ReplicaClient, StorageError
from .storage.file import fsync_dir

log = logging.getLogger("lifeboat")

DEFAULT_INTERVAL = 1.0
# While files keep arriving, poll this many times per interval, until BUSY_POLLS intervals pass
# without one (see Follower.run).
BUSY_SPEEDUP = 4
BUSY_POLLS = 3
# At most this many L0 files per transaction: downloads of one run are concurrent, and a busy
# writer's files are small (one per sync).
RUN_FILES = 64
# os_unix.c's lock bytes: a reader holds a read lock on SHARED_FIRST..+SHARED_SIZE, taken through
# a read lock on PENDING; a writer's write locks on PENDING and the shared range keep readers out.
PENDING_BYTE = 0x40000000
RESERVED_BYTE = PENDING_BYTE + 1
SHARED_FIRST = PENDING_BYTE + 2
SHARED_SIZE = 510
JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")
JOURNAL_SECTOR = 512
_U32 = struct.Struct(">I")


def txid_path(output: Path) -> Path:
    """Where follow mode records the last applied TXID."""
    return Path(f"{output}-txid")


def write_txid(output: Path, txid: int) -> None:
    """Replace `<output>-txid` atomically (temp file, fsync, rename, fsync the directory)."""
    path = txid_path(output)
    tmp = Path(f"{path}.tmp")
    with open(tmp, "w") as f:
        f.write(f"{txid:016x}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_txid(output: Path) -> int:
    """The TXID in `<output>-txid`, or 0 when there is none."""
    path = txid_path(output)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    try:
        value = int(text, 16)
    except ValueError:
        raise RestoreError(f"{path}: not a TXID: {text[:40]!r}") from None
    if len(text) != 16 or value < 1:
        raise RestoreError(f"{path}: not a TXID: {text[:40]!r}")
    return value


def to_rollback_mode(path: Path) -> None:
    """Set a database file's header to rollback-journal mode (bytes 18-19 = 1): a read-only
    connection can then open it without a -shm, and the follower's journal applies."""
    with open(path, "r+b") as f:
        f.seek(18)
        f.write(b"\x01\x01")
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def exclusive_lock(fd: int) -> Iterator[None]:
    """SQLite's EXCLUSIVE lock on the database open at `fd`, waiting for readers to finish.

    RESERVED first (no other writer), then PENDING (no new reader), then the shared range (the
    current readers are gone). POSIX locks belong to the process: nothing else in it may open the
    database while this is held, as closing any descriptor of the file drops them.
    """
    taken: list[tuple[int, int]] = []
    try:
        for start, length in ((RESERVED_BYTE, 1), (PENDING_BYTE, 1), (SHARED_FIRST, SHARED_SIZE)):
            fcntl.lockf(fd, fcntl.LOCK_EX, length, start, os.SEEK_SET)
            taken.append((start, length))
        yield
    finally:
        for start, length in reversed(taken):
            fcntl.lockf(fd, fcntl.LOCK_UN, length, start, os.SEEK_SET)


def _journal_checksum(nonce: int, page: bytes) -> int:
    # pager_cksum(): the nonce plus every 200th byte counted down from the page's end.
    total = nonce
    i = len(page) - 200
    while i > 0:
        total += page[i]
        i -= 200
    return total & 0xFFFFFFFF


def _write_journal(journal: Path, fd: int, pgnos: list[int], page_size: int, db_pages: int) -> None:
    """Save the current content of every page about to be overwritten (those within the current
    size: rollback truncates the rest away) in SQLite's rollback-journal format, durably."""
    saved = [p for p in pgnos if p <= db_pages]
    nonce = int.from_bytes(os.urandom(4), "big")
    header = JOURNAL_MAGIC + struct.pack(">IIIII", len(saved), nonce, db_pages, JOURNAL_SECTOR, page_size)
    with open(journal, "wb") as j:
        j.write(header.ljust(JOURNAL_SECTOR, b"\0"))
        for pgno in saved:
            page = os.pread(fd, page_size, (pgno - 1) * page_size).ljust(page_size, b"\0")
            j.write(_U32.pack(pgno) + page + _U32.pack(_journal_checksum(nonce, page)))
        j.flush()
        os.fsync(j.fileno())
    fsync_dir(journal.parent)


def roll_back(output: Path) -> None:
    """Let SQLite roll back a hot journal a killed follower left (no-op without one)."""
    if not os.path.exists(f"{output}-journal"):
        return
    log.warning("%s: rolling back the journal of an interrupted apply", output)
    conn = sqlite3.connect(output, timeout=60)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
    finally:
        conn.close()


def apply_file(output: Path, path: Path, name: str, page_size: int) -> ltx.Header:
    """Apply one downloaded LTX file to `output` as one SQLite transaction (see :func:`apply_files`)."""
    return apply_files(output, [(path, name)], page_size)[0]


def apply_files(output: Path, files: list[tuple[Path, str]], page_size: int) -> list[ltx.Header]:
    """Apply downloaded LTX files of consecutive TXIDs, in order, to `output` (see the module doc);
    returns their headers.

    Every file is verified whole (every page, its checksum) before the database is touched. Files
    go in as few transactions as is safe: one journal and one set of fsyncs for a run of files, as a
    busy writer uploads many small files per poll. A file that shrinks the database ends its run:
    rollback restores only journaled pages, so a page cut off and regrown within one transaction
    would come back empty.
    """
    headers: list[ltx.Header] = []
    touched: list[set[int]] = []
    for path, name in files:
        with open(path, "rb", buffering=1 << 20) as f:
            dec = ltx.Decoder(f, name)
            if dec.header.page_size != page_size:
                raise RestoreError(f"{name}: page size {dec.header.page_size} differs from the database's {page_size}")
            touched.append({pgno for pgno, _ in dec.pages()})
        headers.append(dec.header)
    roll_back(output)
    size = os.stat(output).st_size // page_size
    start = 0
    for end, header in enumerate(headers, 1):
        if header.commit < size or end == len(headers):
            _apply_run(output, files[start:end], set().union(*touched[start:end]), header.commit, page_size)
            start = end
        size = header.commit
    return headers


def _apply_run(output: Path, files: list[tuple[Path, str]], pgnos: set[int], commit: int, page_size: int) -> None:
    """Write the pages of `files` (verified), in order, as one transaction ending at `commit` pages."""
    pgnos.add(1)  # page 1's header always changes (change counter)
    journal = Path(f"{output}-journal")
    fd = os.open(output, os.O_RDWR)
    try:
        with exclusive_lock(fd):
            db_pages = os.fstat(fd).st_size // page_size
            (counter,) = _U32.unpack(os.pread(fd, 4, 24))
            _write_journal(journal, fd, sorted(pgnos), page_size, db_pages)
            for path, name in files:
                with open(path, "rb", buffering=1 << 20) as f:
                    for pgno, data in ltx.Decoder(f, name).pages():
                        os.pwrite(fd, data, (pgno - 1) * page_size)
            first = bytearray(os.pread(fd, 100, 0))
            first[18:20] = b"\x01\x01"
            counter = (counter + 1) & 0xFFFFFFFF
            first[24:28] = first[92:96] = _U32.pack(counter)
            first[28:32] = _U32.pack(commit)
            os.pwrite(fd, bytes(first), 0)
            os.ftruncate(fd, commit * page_size)
            os.fsync(fd)
            journal.unlink()  # the commit point, as journal_mode=DELETE
            fsync_dir(output.parent)
    finally:
        os.close(fd)


def page_size_of(output: Path) -> int:
    """The page size in a database file's header."""
    with open(output, "rb") as f:
        f.seek(16)
        raw = f.read(2)
    if len(raw) != 2:
        raise RestoreError(f"{output}: not a SQLite database (no header)")
    size = int.from_bytes(raw, "big")
    return 65536 if size == 1 else size


@dataclass
class FollowState:
    """What follow mode's HTTP endpoint reports: readiness, position and lag.

    The follow lag is the larger of two delays, so it neither hides a stuck follower nor grows
    while the writer is merely idle:
    * ``delivered``: for the newest applied file, the time from its replica timestamp (the LTX
      header time, when the writer captured the commit, on a file replica; the upload time the
      object store lists on the others) until it was applied;
    * the age of the oldest file the last listing showed but the follower has not applied yet.
    """

    ready: bool = False  # the first restore (or the resume check) is done
    waiting_logged: bool = False  # said once that the replica holds no backup yet
    txid: int = 0
    delivered: float = 0.0
    pending_since: datetime | None = None

    def lag_seconds(self, now: datetime | None = None) -> float:
        """The follow lag at `now` (see the class doc)."""
        waiting = 0.0
        if self.pending_since is not None:
            waiting = ((now or datetime.now(UTC)) - self.pending_since).total_seconds()
        return max(self.delivered, waiting, 0.0)


class Follower:
    """Applies a replica's new LTX files to a restored database, from its last applied TXID."""

    def __init__(self, client: ReplicaClient, output: Path, txid: int, state: FollowState | None = None) -> None:
        self.client = client
        self.output = output
        self.txid = txid
        self.page_size = page_size_of(output)
        self.last_created: datetime | None = None
        self.state = state or FollowState()
        self.state.txid = txid
        self.state.ready = True

    async def _apply(self, infos: list[FileInfo]) -> None:
        """Download `infos` (consecutive TXIDs) and apply them; record the last one's TXID."""
        names = [f"level {info.level} file {info.name}" for info in infos]
        with tempfile.TemporaryDirectory(prefix=".lifeboat-follow-", dir=self.output.parent) as work:
            dests = [Path(work) / info.name for info in infos]
            await asyncio.gather(*(download(self.client, info, dest, Transfer(1, info.size), _quiet)
                                   for info, dest in zip(infos, dests, strict=True)))
            try:
                headers = await asyncio.to_thread(
                    apply_files, self.output, list(zip(dests, names, strict=True)), self.page_size)
            except ltx.LTXError as exc:
                raise RestoreError(str(exc)) from None
        for info, name, header in zip(infos, names, headers, strict=True):
            if (header.min_txid, header.max_txid) != (info.min_txid, info.max_txid):
                raise RestoreError(f"{name}: header says txids {header.min_txid}-{header.max_txid}")
        last = infos[-1]
        self.txid = last.max_txid
        self.last_created = last.created_at
        self.state.txid = self.txid
        self.state.delivered = max((datetime.now(UTC) - last.created_at).total_seconds(), 0.0)
        # After every run, not every poll: a resumed follower never re-applies an older file
        # over newer pages (re-applying the last one is harmless: the same page images).
        await asyncio.to_thread(write_txid, self.output, self.txid)

    async def _fill_gap(self, gap_min: int) -> None:
        """Bridge TXIDs self.txid+1 .. gap_min-1 from the compacted levels (L1 first)."""
        start = self.txid
        for level in range(1, SNAPSHOT_LEVEL):
            for info in await self.client.ltx_files(level, 0):
                if info.min_txid > self.txid + 1:
                    break
                if info.max_txid <= self.txid:
                    continue
                await self._apply([info])
                if self.txid + 1 >= gap_min:
                    return
            if self.txid > start:
                return

    async def poll(self) -> int:
        """Apply every file past the current TXID; returns how many TXIDs were applied."""
        start = self.txid
        files = await self.client.ltx_files(0, self.txid + 1)
        self._note_pending(files)
        run: list[FileInfo] = []
        for info in files:
            expected = (run[-1].max_txid if run else self.txid) + 1
            if run and (info.min_txid != expected or len(run) >= RUN_FILES):
                await self._apply_and_note(run, files)
                run = []
                expected = self.txid + 1
            if info.min_txid > expected:
                await self._fill_gap(info.min_txid)
                if info.min_txid > self.txid + 1:
                    break  # still a gap: the next poll tries again
            if info.max_txid <= self.txid:
                continue
            run.append(info)
        if run:
            await self._apply_and_note(run, files)
        if not files:
            await self._fill_gap(self.txid + 1)
        return self.txid - start

    async def _apply_and_note(self, run: list[FileInfo], files: list[FileInfo]) -> None:
        await self._apply(run)
        self._note_pending(files)

    def _note_pending(self, files: list[FileInfo]) -> None:
        """Record when the oldest listed file not applied yet reached the replica (None: caught up)."""
        waiting = [f.created_at for f in files if f.max_txid > self.txid]
        self.state.pending_since = min(waiting) if waiting else None

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """Poll until `stop` is set; errors are logged and retried next poll.

        Polls start every `interval` while the replica is quiet, and BUSY_SPEEDUP times as often
        for BUSY_POLLS quiet intervals after one that applied files: a busy writer uploads on its own
        cadence, and polling only every `interval` would add up to a whole interval to every commit's
        lag; an idle replica costs no more listings than `interval` says.
        """
        log.info("entering follow mode: output=%s txid=%016x interval=%gs", self.output, self.txid, interval)
        errors = 0
        loop = asyncio.get_running_loop()
        due = busy_until = loop.time()
        while not stop.is_set():
            # From the last poll's start, however long it took (one late poll does not make the
            # next ones late too).
            step = interval / BUSY_SPEEDUP if loop.time() < busy_until else interval
            due = max(due + step, loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), due - loop.time())
            if stop.is_set():
                break
            before = self.txid
            try:
                await self.poll()
                errors = 0
            except (RestoreError, StorageError, OSError, ltx.LTXError) as exc:
                errors += 1
                log.error("follow: error applying updates: %s (consecutive_errors=%d)", exc, errors)
            if self.txid > before:
                busy_until = loop.time() + BUSY_POLLS * interval
            if self.txid > before and self.last_created is not None:
                lag = (datetime.now(UTC) - self.last_created).total_seconds()
                log.info(
                    "follow: applied updates from_txid=%016x to_txid=%016x lag=%.3fs", before, self.txid, max(lag, 0.0)
                )
        log.info("follow mode stopped at txid %016x", self.txid)


async def check_resume(client: ReplicaClient, output: Path) -> int:
    """The TXID an existing output resumes from, or an error naming why it cannot.

    The replica must still continue from it: some file of L0..L8 starts at or before the next TXID
    (else retention or compaction pruned the history), and the replica must not be behind it (else
    it was reset or belongs to another database).
    """
    txid = read_txid(output)
    if txid == 0:
        raise RestoreError(
            f"cannot resume follow mode: {output} exists but {txid_path(output)} does not; "
            "delete the database to restore it again"
        )
    levels = await list_levels(client)
    latest = max((f.max_txid for fs in levels.values() for f in fs), default=0)
    why = ""
    if txid > latest:
        why = f"saved txid {txid:016x} is ahead of the replica ({latest:016x})"
    elif txid < latest and not any(
        f.min_txid <= txid + 1 <= f.max_txid for lvl, fs in levels.items() if lvl < MAX_LEVEL for f in fs
    ):
        why = f"the replica no longer holds the txids after {txid:016x}"
    if why:
        again = f"delete {output} and {txid_path(output)} to restore it again"
        raise RestoreError(f"cannot resume follow mode: {why}; {again}")
    return txid


async def restore_for_follow(
    client: ReplicaClient,
    output: Path,
    *,
    parallelism: int,
    integrity_check: str,
    if_exists: IfExists,
    progress: Report | None = None,
) -> int:
    """Restore the latest state as follow mode starts from it (rollback-journal header, `-txid`
    file), so `restore -f` resumes there; returns the TXID (0 when `if_exists` skipped it)."""
    def prepare(restored: Path, txid: int) -> None:
        # The `-txid` file goes first: a follower killed between the two finds either no database
        # (restored afresh, the file rewritten) or a database with its TXID, never one without.
        to_rollback_mode(restored)
        write_txid(output, txid)

    result = await restore(
        client, str(output), parallelism=parallelism, integrity_check=integrity_check, if_exists=if_exists,
        progress=progress, before_install=prepare, legacy_v3=False,
    )
    if result is None:
        return 0
    log.info("restored %s to txid %016x from %d file(s)", output, result.txid, result.files)
    return result.txid


def _quiet(_: Transfer) -> None:
    pass


async def restore_and_follow(
    client: ReplicaClient,
    output: Path,
    *,
    interval: float,
    if_exists: IfExists,
    parallelism: int,
    integrity_check: str,
    progress: Report | None = None,
    addr: str | None = None,
) -> int:
    """`restore -f`: restore `output` (or resume following it when it exists with its `-txid`
    file, unless `if_exists` is REPLACE), then follow until SIGTERM or SIGINT. Returns the last
    applied TXID.

    With `addr`, `/metrics`, `/healthz` and `/readyz` are served there from the start; `/readyz`
    answers 200 only once the restore (or the resume check) is done.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    state = FollowState()
    server = None
    if addr:
        # Imported here: `restore -f` without an address needs no HTTP server nor prometheus-client.
        from .server import serve_follow

        try:
            server = await serve_follow(addr, state, str(output))
        except (ValueError, OSError) as exc:
            raise RestoreError(f"config addr {addr!r}: cannot serve follow mode's HTTP port: {exc}") from None
    try:
        return await _restore_then_follow(
            client, output, interval=interval, if_exists=if_exists, parallelism=parallelism,
            integrity_check=integrity_check, progress=progress, state=state, stop=stop,
        )
    finally:
        if server is not None:
            server.close()
            await server.wait_closed()


async def _restore_then_follow(
    client: ReplicaClient,
    output: Path,
    *,
    interval: float,
    if_exists: IfExists,
    parallelism: int,
    integrity_check: str,
    progress: Report | None,
    state: FollowState,
    stop: asyncio.Event,
) -> int:
    if os.path.lexists(output) and if_exists is not IfExists.REPLACE:
        txid = await check_resume(client, output)
        await asyncio.to_thread(roll_back, output)
        log.info("resuming follow mode: output=%s txid=%016x", output, txid)
    else:
        while True:
            try:
                txid = await restore_for_follow(
                    client, output, parallelism=parallelism, integrity_check=integrity_check, if_exists=if_exists,
                    progress=progress,
                )
                break
            except NoBackupError:
                # A follower may start before the writer's first upload: wait for it, not ready.
                if not state.waiting_logged:
                    log.info("follow: %r holds no backup yet; waiting for the writer's first upload", client)
                    state.waiting_logged = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
                if stop.is_set():
                    return 0
    follower = Follower(client, output, txid, state)
    await follower.run(interval, stop)
    return follower.txid
