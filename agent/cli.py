"""`lifeboat`: a drop-in for Litestream's CLI (same commands and flags, one or two dashes).

Exit codes: 0 success, 1 failure, 2 usage error. Every failure is one line on stderr naming the file,
URL or key at fault.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from . import config as cfgmod
from .config_model import DEFAULT_SOCKET_PATH
from .config_values import expand_path, parse_duration
from .db import DatabaseError, default_meta_dir
from .dirsource import all_databases, resolve
from .fdlimit import raise_open_file_limit
from .follow import restore_and_follow, restore_for_follow
from .ltx import LTXError
from .progress import Progress
from .restore import IfExists, NoBackupError, RestoreError, UnservableTargetError, list_levels, plan, restore
from .restore_fetch import MAX_PARALLELISM, threads_for
from .sqlite import SQLiteFormatError
from .storage import ConfigError, ReplicaClient, StorageError, new_client, parse_timestamp

log = logging.getLogger("lifeboat")


T = TypeVar("T")


class CLIError(Exception):
    """A failure reported as one line on stderr with exit code 1."""


def agent_version() -> str:
    """The installed version of lifeboat."""
    # Imported here: importlib.metadata (email, zipfile, csv, ...) costs ~1 MB that `replicate` needs
    # only for the control socket.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sqlite-lifeboat")
    except PackageNotFoundError:
        return "0.0.0-dev"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"lifeboat {self.prog.split()[-1]}: {message}\n")


def _flag(p: argparse.ArgumentParser, name: str, **kw: Any) -> None:
    """Accept Litestream's single-dash spelling and the double-dash one."""
    p.add_argument(f"-{name}", f"--{name}", dest=name.replace("-", "_"), **kw)


def _build_parser() -> argparse.ArgumentParser:
    root = _Parser(prog="lifeboat", description="Disaster recovery for SQLite: stream the WAL to a replica.")
    sub = root.add_subparsers(dest="command", parser_class=_Parser)

    rep = sub.add_parser("replicate", help="replicate databases continuously")
    for name in ("config", "exec", "log-level"):
        _flag(rep, name)
    for name in ("no-expand-env", "once", "force-snapshot", "enforce-retention", "restore-if-db-not-exists"):
        _flag(rep, name, action="store_true")
    rep.add_argument("args", nargs="*", metavar="DB_PATH REPLICA_URL")

    res = sub.add_parser("restore", help="restore a database from its replica")
    for name in ("config", "o", "txid", "timestamp", "integrity-check"):
        _flag(res, name)
    _flag(res, "parallelism", type=int, default=8)
    _flag(res, "follow-interval", default="1s")
    for name in ("no-expand-env", "if-db-not-exists", "if-replica-exists", "dry-run", "force", "json", "f"):
        _flag(res, name, action="store_true")
    _flag(res, "follow-ready", action="store_true",
          help="leave the restored database as follow mode starts from it (for a later restore -f)")
    res.add_argument("target", metavar="DB_PATH|REPLICA_URL")

    lt = sub.add_parser("ltx", aliases=["wal"], help="list the replica's LTX files")
    _flag(lt, "config")
    _flag(lt, "level", default="0")
    for name in ("no-expand-env", "json"):
        _flag(lt, name, action="store_true")
    lt.add_argument("target", metavar="DB_PATH|REPLICA_URL")

    dbs = sub.add_parser("databases", help="list the configured databases")
    _flag(dbs, "config")
    for name in ("no-expand-env", "json"):
        _flag(dbs, name, action="store_true")

    st = sub.add_parser("status", help="local replication state of each database")
    _flag(st, "config")
    for name in ("no-expand-env", "json"):
        _flag(st, name, action="store_true")
    st.add_argument("db", nargs="?")

    rs = sub.add_parser("reset", help="delete a database's local replication state")
    _flag(rs, "config")
    for name in ("no-expand-env", "dry-run"):
        _flag(rs, name, action="store_true")
    rs.add_argument("db")

    _control_parsers(sub)

    ver = sub.add_parser("version", help="print the version")
    _flag(ver, "verbose", action="store_true")
    return root


CONTROL_COMMANDS = {  # command: (help, default -timeout in seconds)
    "sync": ("sync a database now, optionally until its replica has it (control socket)", 30),
    "info": ("show the running agent's version, pid, uptime (control socket)", 10),
    "list": ("list the running agent's databases (control socket)", 10),
    "start": ("start replicating a stopped database (control socket)", 30),
    "stop": ("stop replicating a database, after a final sync (control socket)", 30),
    "register": ("add a database to the running agent (control socket)", 30),
    "unregister": ("remove a database from the running agent, after a final sync (control socket)", 30),
}


def _control_parsers(sub: Any) -> None:
    for name, (text, timeout) in CONTROL_COMMANDS.items():
        p = sub.add_parser(name, help=text)
        _flag(p, "socket", default=DEFAULT_SOCKET_PATH)
        _flag(p, "timeout", type=int, default=timeout)
        _flag(p, "json", action="store_true")
        if name == "sync":
            _flag(p, "wait", action="store_true")
        if name == "register":
            _flag(p, "replica", default="")
        if name == "unregister":
            _flag(p, "dry-run", action="store_true")
        if name not in ("info", "list"):
            p.add_argument("db", metavar="DB_PATH")


# ---- configuration helpers ---------------------------------------------------------------------


def _load(args: argparse.Namespace, required: bool = True) -> cfgmod.Config | None:
    path = args.config or cfgmod.default_config_path()
    if not args.config and not os.path.exists(path):
        if required:
            raise CLIError(f"config file not found: {path} (pass -config or a DB path and replica URL)")
        return None
    if not os.path.exists(path):
        raise CLIError(f"config file not found: {path}")
    return cfgmod.load_config(path, expand=not args.no_expand_env)


def _find_db(conf: cfgmod.Config, path: str) -> cfgmod.DBConfig:
    """The database's own entry, or the one a `dir:` entry derives for a path under its directory."""
    db = resolve(conf, path)
    if db is None:
        raise CLIError(f"database not found in config {conf.source}: {expand_path(path)}")
    return db


def _client_for(args: argparse.Namespace, target: str) -> tuple[ReplicaClient, cfgmod.DBConfig | None]:
    """A replica URL, or a database path looked up in the config."""
    if "://" in target:
        return new_client({"url": target}), None
    conf = _load(args)
    assert conf is not None
    db = _find_db(conf, target)
    if db.replica is None:
        raise CLIError(f"{conf.source}: database {db.path} has no replica")
    return new_client(db.replica.settings), db


# ---- commands ----------------------------------------------------------------------------------


def _setup_logging(level: str, kind: str = "text", *, stderr: bool | None = None, source: bool = False) -> None:
    """Log records to stderr (Lifeboat's default), or to stdout when the config says
    `logging.stderr: false` (Litestream's default); `source` adds the file and line of each record."""
    level = os.environ.get("LOG_LEVEL", level).upper()
    handler = logging.StreamHandler(sys.stdout if stderr is False else sys.stderr)
    where = " %(pathname)s:%(lineno)d" if source else ""
    if kind == "json":
        handler.setFormatter(_JSONFormatter(source=source))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s{where} %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level, logging.INFO))
    # SDK debug logs print request headers, credentials included: never below WARNING.
    for name in ("botocore", "boto3", "s3transfer", "urllib3", "azure", "google", "paramiko", "nats"):
        logging.getLogger(name).setLevel(logging.WARNING)


class _JSONFormatter(logging.Formatter):
    def __init__(self, *, source: bool = False) -> None:
        super().__init__()
        self.source = source

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.source:
            out["source"] = {"file": record.pathname, "line": record.lineno, "function": record.funcName}
        for key in ("event", "db", "replica"):  # structured context from `extra=`
            if getattr(record, key, None) is not None:
                out[key] = getattr(record, key)
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def cmd_replicate(args: argparse.Namespace) -> int:
    if args.args:
        if args.config:
            raise CLIError("cannot use -config together with a DB path and replica URL")
        if len(args.args) != 2:
            raise CLIError("replicate takes exactly one DB path and one replica URL")
        conf = cfgmod.config_for_db(args.args[0], args.args[1])
        if not os.path.exists(conf.dbs[0].path):
            raise CLIError(f"{conf.dbs[0].path}: database does not exist")
    else:
        conf = _load(args)
        assert conf is not None
    if (args.force_snapshot or args.enforce_retention) and not args.once:
        raise CLIError("-force-snapshot and -enforce-retention require -once")
    exec_cmd = args.exec or conf.exec  # the flag wins over the config's `exec:`, as in Litestream
    if exec_cmd and args.once:
        raise CLIError("-exec cannot be used with -once")
    from .child import parse_command

    try:
        exec_argv = parse_command(exec_cmd) if exec_cmd else None
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    _setup_logging(
        args.log_level or conf.logging_level, conf.logging_type, stderr=conf.logging_stderr, source=conf.logging_source
    )
    # Imported here: the long-running machinery (prometheus-client, the HTTP server, the watchers)
    # would only slow down and enlarge the one-shot commands, restore in an init container above all.
    from . import replicate_cmd

    raise_open_file_limit()  # a thousand databases need thousands of descriptors
    return replicate_cmd.run(
        conf, once=args.once, force_snapshot=args.force_snapshot, enforce_retention=args.enforce_retention,
        restore_if_db_not_exists=args.restore_if_db_not_exists, expand=not args.no_expand_env, exec_argv=exec_argv,
    )


def cmd_restore(args: argparse.Namespace) -> int:
    client, db = _client_for(args, args.target)
    output = args.o or (db.path if db is not None else None)
    if output is None:
        raise CLIError("restore from a replica URL needs an output path (-o)")
    if not 1 <= args.parallelism <= MAX_PARALLELISM:
        raise CLIError(f"invalid -parallelism {args.parallelism}: must be between 1 and {MAX_PARALLELISM}")
    if args.txid and args.timestamp:
        raise CLIError("cannot specify both -txid and -timestamp")
    txid = _parse_txid(args.txid) if args.txid else None
    ts = _parse_ts(args.timestamp) if args.timestamp else None
    check = (args.integrity_check or "none").lower()
    if check not in ("none", "quick", "full"):
        raise CLIError(f"invalid -integrity-check {args.integrity_check!r}: expected none, quick or full")
    out = os.path.abspath(output)
    if args.f:
        _check_follow_flags(args)
    if args.dry_run:
        return _run_with(client, _dry_run(client, txid, ts, args.json))
    # -if-db-not-exists first, as Litestream: with both flags an existing database is kept.
    if_exists = IfExists.SKIP if args.if_db_not_exists else IfExists.REPLACE if args.force else IfExists.FAIL
    if args.f:
        _setup_logging("INFO")
        # The config's `addr`, as `replicate` serves it: the follower's /metrics and /readyz.
        conf = _load(args) if "://" not in args.target else None
        _run_with(
            client,
            restore_and_follow(
                client, Path(out), interval=parse_duration(args.follow_interval, allow_zero=False),
                if_exists=if_exists, parallelism=args.parallelism, integrity_check=check,
                addr=conf.addr if conf is not None else None,
            ),
            threads_for(args.parallelism),
        )
        return 0
    if args.follow_ready:
        _check_follow_ready_flags(args)
        return _restore_follow_ready(args, client, Path(out), if_exists, check)
    started = time.monotonic()
    bar = Progress()
    try:
        result = _run_with(
            client,
            restore(
                client, out, txid=txid, timestamp=ts, parallelism=args.parallelism, integrity_check=check,
                if_exists=if_exists, progress=bar,
            ),
            threads_for(args.parallelism),
        )
    except NoBackupError:
        if args.if_replica_exists:
            print(f"no backup found in {client!r}, skipping restore", file=sys.stderr)
            return 0
        raise CLIError(f"{client!r}: no matching backup files available (the replica holds no files)") from None
    except UnservableTargetError as exc:
        raise CLIError(f"{client!r}: {exc}") from None
    finally:
        bar.done()
    if result is None:
        print(f"database already exists, skipping restore: {out}", file=sys.stderr)
        return 0
    if args.json:
        print(
            json.dumps(
                {
                    "db_path": result.path,
                    "replica": repr(client),
                    "txid": f"{result.txid:016x}",
                    "duration_ms": int((time.monotonic() - started) * 1000),
                    "integrity_check": result.integrity_check,
                }
            )
        )
    else:
        print(f"restored {result.path} to txid {result.txid:016x} from {result.files} file(s)", file=sys.stderr)
    return 0


def _check_follow_flags(args: argparse.Namespace) -> None:
    for flag in ("txid", "timestamp", "dry_run"):
        if getattr(args, flag):
            raise CLIError(f"cannot use follow mode (-f) with -{flag.replace('_', '-')}")
    try:
        parse_duration(args.follow_interval, allow_zero=False)
    except ValueError as exc:
        raise CLIError(f"invalid -follow-interval {args.follow_interval!r}: {exc}") from None


def _check_follow_ready_flags(args: argparse.Namespace) -> None:
    # Follow mode continues from the latest state only: a point in time would be moved past.
    for flag in ("txid", "timestamp"):
        if getattr(args, flag):
            raise CLIError(f"cannot use -follow-ready with -{flag}")


def _restore_follow_ready(
    args: argparse.Namespace, client: ReplicaClient, out: Path, if_exists: IfExists, check: str
) -> int:
    """`restore -follow-ready`: the latest state, left for `restore -f` to resume from."""
    bar = Progress()
    try:
        txid = _run_with(
            client,
            restore_for_follow(client, out, parallelism=args.parallelism, integrity_check=check,
                               if_exists=if_exists, progress=bar),
        )
    except NoBackupError:
        if args.if_replica_exists:
            print(f"no backup found in {client!r}, skipping restore", file=sys.stderr)
            return 0
        raise CLIError(f"{client!r}: no matching backup files available (the replica holds no files)") from None
    finally:
        bar.done()
    if txid == 0:
        print(f"database already exists, skipping restore: {out}", file=sys.stderr)
    else:
        print(f"restored {out} to txid {txid:016x}, ready to follow", file=sys.stderr)
    return 0


async def _dry_run(client: ReplicaClient, txid: int | None, ts: datetime | None, as_json: bool) -> int:
    files = plan(await list_levels(client, ts is not None), txid=txid, timestamp=ts)
    rows = [
        {
            "level": f.level,
            "name": f.name,
            "min_txid": f"{f.min_txid:016x}",
            "max_txid": f"{f.max_txid:016x}",
            "size": f.size,
            "timestamp": f.created_at.isoformat(),
        }
        for f in files
    ]
    if as_json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"level={r['level']} {r['name']} size={r['size']} created={r['timestamp']}")
    return 0


def _run_with(client: ReplicaClient, coro: Coroutine[Any, Any, T], threads: int | None = None) -> T:
    """Run one client operation, then close the client's connections (SFTP, NATS hold some).
    `threads` sizes the worker pool the blocking SDK calls run in (default: asyncio's)."""

    async def run() -> T:
        if threads is not None:
            asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(threads))
        try:
            return await coro
        finally:
            await client.close()

    return asyncio.run(run())


def _parse_txid(text: str) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        raise CLIError(f"invalid -txid {text!r}: expected a hexadecimal TXID") from None
    if value <= 0:
        raise CLIError(f"invalid -txid {text!r}: must be positive")
    return value


def _parse_ts(text: str) -> datetime:
    try:
        return parse_timestamp(text)
    except ValueError:
        raise CLIError(f"invalid -timestamp {text!r}: expected RFC3339, e.g. 2026-01-02T15:04:05Z") from None


def cmd_ltx(args: argparse.Namespace) -> int:
    client, _ = _client_for(args, args.target)
    if args.level == "all":
        levels = list(range(10))
    else:
        try:
            levels = [int(args.level)]
        except ValueError:
            raise CLIError(f"invalid -level {args.level!r}: expected 0-9 or all") from None
        if not 0 <= levels[0] <= 9:
            raise CLIError(f"invalid -level {args.level!r}: expected 0-9 or all")

    async def listing() -> list[dict[str, Any]]:
        rows = []
        for lvl in levels:
            for f in await client.ltx_files(lvl):
                rows.append(
                    {
                        "level": lvl,
                        "min_txid": f"{f.min_txid:016x}",
                        "max_txid": f"{f.max_txid:016x}",
                        "size": f.size,
                        "created": f.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }
                )
        return rows

    _print_rows(_run_with(client, listing()), {"level": 6, "min_txid": 18, "max_txid": 18, "size": 12, "created": 0},
                args.json)
    return 0


def _print_rows(rows: list[dict[str, Any]], widths: dict[str, int], as_json: bool) -> None:
    """JSON, or a left-aligned table of the given columns (width 0: last column, unpadded)."""
    if as_json:
        print(json.dumps(rows))
        return
    print("".join(f"{k:<{w}}" for k, w in widths.items()).rstrip())
    for r in rows:
        print("".join(f"{r[k]!s:<{w}}" for k, w in widths.items()).rstrip())


def cmd_databases(args: argparse.Namespace) -> int:
    conf = _load(args)
    assert conf is not None
    rows = [{"path": db.path, "replica": db.replica.type if db.replica else None} for db in all_databases(conf)]
    _print_rows(rows, {"path": 50, "replica": 0}, args.json)
    return 0


def _local_status(db: cfgmod.DBConfig) -> dict[str, Any]:
    meta = Path(db.meta_path or default_meta_dir(db.path))
    txid = 0
    l0 = meta / "ltx" / "0"
    if l0.is_dir():
        names = sorted(n for n in os.listdir(l0) if n.endswith(".ltx"))
        if names:
            txid = int(names[-1][17:33], 16)
    wal = db.path + "-wal"
    status = "ok" if txid else "not initialized"
    if not os.path.exists(db.path):
        status = "no database"
    return {
        "path": db.path,
        "status": status,
        "txid": f"{txid:016x}",
        "wal_size": os.path.getsize(wal) if os.path.exists(wal) else 0,
    }


def cmd_status(args: argparse.Namespace) -> int:
    conf = _load(args)
    assert conf is not None
    dbs = [_find_db(conf, args.db)] if args.db else all_databases(conf)
    _print_rows([_local_status(db) for db in dbs], {"path": 50, "status": 18, "txid": 18, "wal_size": 0}, args.json)
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    path = os.path.abspath(args.db)
    meta_path = None
    conf = _load(args, required=False)
    if conf is not None:
        db = resolve(conf, path)
        meta_path = db.meta_path if db is not None else None
    if not os.path.exists(path):
        raise CLIError(f"{path}: database does not exist")
    target = Path(meta_path or default_meta_dir(path)) / "ltx"
    if args.dry_run:
        print(f"would remove {target}")
        return 0
    shutil.rmtree(target, ignore_errors=True)
    print(f"reset local state of {path}: removed {target}")
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    """`sync`, `info`, `list`, `start`, `stop`, `register`, `unregister`: one request to a running
    agent's control socket, printed as Litestream prints it (or as JSON with -json)."""
    from .control import ClientError, request

    if args.timeout <= 0:
        raise CLIError("timeout must be greater than 0")
    cmd = args.command
    db = os.path.abspath(os.path.expanduser(args.db)) if hasattr(args, "db") else None
    if cmd == "register" and not args.replica:
        raise CLIError("-replica is required (e.g. -replica s3://bucket/prefix)")
    if cmd == "unregister" and args.dry_run:
        print(f"Dry run: unregister request preview\n  database: {db}\n  socket: {args.socket}\n"
              f"  timeout: {args.timeout}s\nNo unregister request was sent.")
        return 0
    body: dict[str, Any] | None = None
    if cmd == "register":
        body = {"path": db, "replica_url": args.replica}
    elif db is not None:
        body = {"path": db, "timeout": args.timeout}
        if cmd == "sync":
            body["wait"] = args.wait
    started = time.monotonic()
    try:
        answer = request(args.socket, "GET" if body is None else "POST", f"/{cmd}", body, args.timeout)
    except ClientError as exc:
        raise CLIError(f"{cmd} failed: {exc}") from None
    out = _control_result(args, answer, int((time.monotonic() - started) * 1000))
    if args.json:
        print(json.dumps(out, indent=2))
    elif cmd == "info":
        print(f"lifeboat {out['version']}\n  PID:        {out['pid']}\n  Uptime:     {out['uptime_seconds']}s\n"
              f"  Started at: {out['started_at']}\n  Databases:  {out['database_count']}")
    elif cmd == "list":
        for d in out["databases"]:
            print(f"{d['path']} [{d['status']}] (last sync: {d.get('last_sync_at') or 'never'})")
        if not out["databases"]:
            print("No databases configured")
    else:
        for key, value in out.items():
            shown = "already registered" if key == "status" and value == "already_registered" else value
            print(f"{key}: {shown}")
    return 0


def _control_result(args: argparse.Namespace, answer: dict[str, Any], duration_ms: int) -> dict[str, Any]:
    """Litestream's confirmation for each command, built from the agent's answer."""
    cmd = args.command
    if cmd in ("info", "list"):
        return answer
    if cmd == "sync":
        out = {"db_path": answer.get("path"), "txid": answer.get("txid")}
        if args.wait:
            out["replica_txid"] = answer.get("replicated_txid")
        return {**out, "duration_ms": duration_ms}
    out = {"status": answer.get("status"), "db_path": answer.get("path")}
    if cmd in ("start", "stop"):
        out |= {"state": "running" if cmd == "start" else "stopped", "txid": answer.get("txid")}
    elif cmd == "register":
        out["replica"] = args.replica
    else:
        out["final_txid"] = answer.get("txid")
    return {**out, "socket": args.socket}


def cmd_version(args: argparse.Namespace) -> int:
    print(f"lifeboat v{agent_version()}")
    return 0


COMMANDS = {
    "replicate": cmd_replicate,
    "restore": cmd_restore,
    "ltx": cmd_ltx,
    "wal": cmd_ltx,
    "databases": cmd_databases,
    "status": cmd_status,
    "reset": cmd_reset,
    "version": cmd_version,
    **dict.fromkeys(CONTROL_COMMANDS, cmd_control),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lifeboat` command."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 1
    except (CLIError, ConfigError, DatabaseError, RestoreError, StorageError, LTXError, SQLiteFormatError) as exc:
        print(f"lifeboat {args.command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"lifeboat {args.command}: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
