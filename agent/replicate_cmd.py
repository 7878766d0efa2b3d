"""`lifeboat replicate`: the long-running agent (store, lifecycle, metrics, HTTP server, config reload).

Kept apart from `cli.py` so that the one-shot commands never import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from . import config as cfgmod
from . import ltx
from .child import Child
from .cli import agent_version
from .compaction import LifecycleSettings
from .control import ControlServer
from .db import DatabaseOptions
from .dirwatch import DirectoryMonitor, DirectorySource
from .heartbeat import Heartbeat
from .metrics import Metrics
from .restore import NoBackupError, restore
from .server import serve
from .storage import ConfigError, StorageError, new_client
from .store import DatabaseSpec, Store

log = logging.getLogger("lifeboat")
CONFIG_POLL_SECONDS = 2.0


def run(
    conf: cfgmod.Config,
    *,
    once: bool,
    force_snapshot: bool,
    enforce_retention: bool,
    restore_if_db_not_exists: bool,
    expand: bool,
    exec_argv: list[str] | None = None,
) -> int:
    """Replicate every database of `conf` until SIGTERM (or one pass with `once`), or while the
    `exec_argv` child runs; the exit code (the child's, with `exec_argv`)."""
    _limit_malloc_arenas()
    specs = _specs(conf)
    sources = _directory_sources(conf)
    for db, spec in zip(conf.dbs, specs, strict=True):
        if (restore_if_db_not_exists or db.restore_if_db_not_exists) and not os.path.exists(db.path):
            try:
                asyncio.run(restore(spec.client, db.path))
                log.info("restored %s from %r", db.path, spec.client)
            except NoBackupError:
                log.info("no backup for %s: starting fresh", db.path)
    if once:  # one pass over the databases under each `dir:` as they are now
        specs += [_spec(conf, src.config_for(p), dynamic=True) for src in sources for p in src.find()]
    return asyncio.run(
        _replicate(
            conf, specs, once=once, force_snapshot=force_snapshot, enforce_retention=enforce_retention, expand=expand,
            exec_argv=exec_argv, sources=sources,
        )
    )


def _db_options(db: cfgmod.DBConfig) -> DatabaseOptions:
    return DatabaseOptions(
        meta_path=db.meta_path,
        busy_timeout=db.busy_timeout,
        min_checkpoint_page_count=db.min_checkpoint_page_count,
        truncate_page_n=db.truncate_page_n,
        checkpoint_interval=db.checkpoint_interval,
        max_sync_wal_bytes=db.max_sync_wal_bytes,
    )


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas for a long-running sidecar.

    glibc gives every thread that allocates its own arena (up to 8 per core) and keeps what is freed
    in each; the SDK and worker threads then hold several MB each that the agent never needs again.
    """
    import ctypes

    m_arena_max = -8  # from glibc's malloc.h
    try:
        ctypes.CDLL(None).mallopt(m_arena_max, arenas)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _specs(conf: cfgmod.Config) -> list[DatabaseSpec]:
    return [_spec(conf, db) for db in conf.dbs]


def _spec(conf: cfgmod.Config, db: cfgmod.DBConfig, *, dynamic: bool = False) -> DatabaseSpec:
    if db.replica is None:
        raise ConfigError(f"{conf.source}: database {db.path} has no replica")
    return DatabaseSpec(
        db.path, new_client(db.replica.settings), _db_options(db), db.monitor_interval,
        db.replica.sync_interval, _lifecycle(conf), dict(db.replica.settings), dynamic=dynamic,
    )


def _directory_sources(conf: cfgmod.Config) -> list[DirectorySource]:
    """The `dir:` entries, checked as Litestream checks them at start-up."""
    sources = []
    for entry in conf.directories:
        if not os.path.isdir(entry.path):
            raise ConfigError(f"{conf.source}: dir {entry.path}: not a directory")
        source = DirectorySource(entry)
        if not entry.watch and not source.find():
            raise ConfigError(
                f"{conf.source}: no SQLite databases found in directory {entry.path} with pattern {entry.pattern}"
            )
        sources.append(source)
    return sources


async def _watch_config(path: str, expand: bool, store: Store, stop: asyncio.Event) -> None:
    """Reload the config file when it changes (a ConfigMap update swaps its symlinks)."""
    def read() -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError:
            return b""

    last = read()
    while not stop.is_set():
        await asyncio.sleep(CONFIG_POLL_SECONDS)
        current = read()
        if current == last or not current:
            continue
        last = current
        try:
            conf = cfgmod.load_config(path, expand=expand)
            reasons = store.reconfigure(_specs(conf), conf.paused)
            ltx.use_block_encoding(conf.ltx_page_encoding == "block")
        except (ConfigError, StorageError) as exc:
            log.error("config reload failed, keeping the running configuration: %s", exc)
            continue
        if reasons:
            log.warning("config reloaded; a restart is needed to apply: %s", "; ".join(reasons))
        else:
            log.info("config reloaded from %s%s", path, " (replication paused)" if conf.paused else "")


def _lifecycle(conf: cfgmod.Config) -> LifecycleSettings:
    return LifecycleSettings(
        levels=list(conf.levels),
        snapshot_interval=conf.snapshot_interval,
        snapshot_retention=conf.snapshot_retention,
        l0_retention=conf.l0_retention,
        l0_retention_check_interval=conf.l0_retention_check_interval,
        retention_enabled=conf.retention_enabled,
        validation_interval=conf.validation_interval or 0.0,
        verify_compaction=conf.verify_compaction,
    )


async def _replicate(
    conf: cfgmod.Config,
    specs: list[DatabaseSpec],
    *,
    once: bool,
    force_snapshot: bool = False,
    enforce_retention: bool = False,
    expand: bool = True,
    exec_argv: list[str] | None = None,
    sources: list[DirectorySource] | None = None,
) -> int:
    ltx.use_block_encoding(conf.ltx_page_encoding == "block")
    metrics = Metrics()
    for spec in specs:
        spec.client = metrics.instrument(spec.client, spec.path, conf.l0_retention)
    store = Store(specs, hook=metrics.observe, on_add=lambda r: metrics.register(r.db.path, r.replica.client.type))
    for r in store.runners:
        metrics.register(r.db.path, r.replica.client.type)
    if once:
        try:
            await store.open()
            await store.sync_once(force_snapshot=force_snapshot, enforce_retention=enforce_retention)
        finally:
            await store.close()
        return 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = None
    control: ControlServer | None = None
    child: Child | None = None
    if conf.addr:
        server = await serve(conf.addr, store, metrics)
    try:
        # The child starts once every database is open, so its first commits are followed; at once
        # if a database does not exist yet, since then the child is what creates it.
        if exec_argv and not all(os.path.exists(r.db.path) for r in store.runners):
            child = await _start_child(exec_argv, stop)
        # A pod's first start: the restore found no replica and the app, which starts only once this
        # agent is up (native sidecar startup probe), has not created its database yet. Like
        # Litestream, wait for it instead of exiting.
        if await _wait_for_databases(store, stop):
            await store.open()
        if conf.socket_enabled and not stop.is_set():
            control = ControlServer(store, _registered_spec(conf, metrics), f"v{agent_version()}")
            await control.listen(conf.socket_path, conf.socket_permissions)
        if exec_argv and child is None and not stop.is_set():
            child = await _start_child(exec_argv, stop)
    except BaseException:
        if server is not None:
            server.close()
        if control is not None:
            await control.close()
        await store.close()
        if child is not None:
            await child.terminate()
        raise
    if stop.is_set() and not all(r.opened for r in store.runners):
        if server is not None:
            server.close()
        if control is not None:
            await control.close()
        await store.close()
        return child.exit_code() if child is not None and child.proc.returncode is not None else 0
    for r in store.runners:
        r.paused = conf.paused
        log.info("replicating %s to %s%s", r.db.path, r.replica.url, " (paused)" if conf.paused else "")
    background = []
    if conf.source != "<args>":
        background.append(asyncio.create_task(_watch_config(conf.source, expand, store, stop)))
    for source in sources or []:
        monitor = DirectoryMonitor(source, store, _instrumented(conf, metrics))
        background.append(asyncio.create_task(monitor.run(stop)))
    if conf.heartbeat_url:
        beat = Heartbeat(conf.heartbeat_url, conf.heartbeat_interval, metrics.registry)
        background.append(asyncio.create_task(beat.run(store.statuses, stop)))
    try:
        await store.run(stop, conf.shutdown_sync_timeout, conf.shutdown_sync_interval)
    finally:
        for task in background:
            task.cancel()
        if server is not None:
            server.close()
        if control is not None:
            await control.close()
        if child is not None:
            await child.terminate()  # replication stopped first (lost lease): the child goes too
    if store.lost_lease or child is None:
        return 1 if store.lost_lease else 0
    return child.exit_code()


def _instrumented(conf: cfgmod.Config, metrics: Metrics) -> Callable[[cfgmod.DBConfig], DatabaseSpec]:
    """How a database found under a `dir:` entry is replicated, its replica calls counted."""

    def make(db: cfgmod.DBConfig) -> DatabaseSpec:
        spec = _spec(conf, db, dynamic=True)
        spec.client = metrics.instrument(spec.client, spec.path, conf.l0_retention)
        return spec

    return make


def _registered_spec(conf: cfgmod.Config, metrics: Metrics) -> Callable[[str, str], DatabaseSpec]:
    """How a database registered at runtime (`register -replica URL DB`) is replicated: the
    config's defaults for everything but its replica URL."""

    def make(path: str, url: str) -> DatabaseSpec:
        client = metrics.instrument(new_client({"url": url}), path, conf.l0_retention)
        return DatabaseSpec(path, client, DatabaseOptions(), lifecycle=_lifecycle(conf),
                            replica_settings={"url": url}, dynamic=True)

    return make


async def _start_child(argv: list[str], stop: asyncio.Event) -> Child:
    child = await Child.start(argv)
    child.forward_signals()
    asyncio.create_task(child.wait(stop))  # noqa: RUF006 - ends with the child; `stop` is its result
    return child


async def _wait_for_databases(store: Store, stop: asyncio.Event) -> bool:
    """Until every database file exists (True), or `stop` is set (False).

    A file that has just appeared gets a moment to receive its header: SQLite creates it empty.
    """
    logged: set[str] = set()
    appeared: dict[str, float] = {}
    while not stop.is_set():
        now = time.monotonic()
        missing = []
        for r in store.runners:
            try:
                size = os.path.getsize(r.db.path)
            except FileNotFoundError:
                missing.append(r.db.path)
                continue
            if size == 0 and r.db.path in logged and now - appeared.setdefault(r.db.path, now) < 1.0:
                missing.append(r.db.path)
        if not missing:
            return True
        for path in missing:
            if path not in logged:
                log.info("%s: database does not exist yet; waiting for the application to create it", path)
                logged.add(path)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)
    return False
