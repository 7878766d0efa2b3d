"""The plugin's command line: pure parsing, no API calls."""

import argparse
import datetime
import re
from collections.abc import Sequence
from typing import Any

PROG = "kubectl-lifeboat"
TXID = re.compile(r"^[0-9a-f]{16}$")
DEFAULT_VERIFY_TIMEOUT = 600.0


class UsageError(Exception):
    """A command line the plugin refuses; its text names the argument at fault."""


def restore_point(value: str) -> dict[str, str]:
    """The SQLiteRestore spec fields for ``--to``: ``{"txid": ...}`` or ``{"timestamp": ...}`` (UTC, RFC 3339)."""
    if TXID.match(value):
        return {"txid": value}
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"--to {value!r}: expected an RFC 3339 time such as 2024-05-01T12:00:00Z "
                         "or a TXID of 16 hex digits") from None
    if when.tzinfo is None:
        raise UsageError(f"--to {value!r}: the time needs a zone (Z or +hh:mm), the cluster's clock is not yours")
    utc = when.astimezone(datetime.UTC)
    # Whole seconds as Z, fractions kept: the restore picks the last transaction at or before it.
    text = utc.strftime("%Y-%m-%dT%H:%M:%S") + (f".{utc.microsecond:06d}".rstrip("0") if utc.microsecond else "")
    return {"timestamp": text + "Z"}


def _positive(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected more than 0 seconds")
    return seconds


def _connection_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """kubectl's connection flags. Accepted before and after the command: a subcommand's copy must not
    reset what was given before it, so its defaults are suppressed."""
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument("--kubeconfig", default=default, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--context", default=default, help="the kubeconfig context to use")
    parser.add_argument("-n", "--namespace", default=default, help="namespace (default: the context's, else default)")


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of exiting, so that main prints one line."""

    def error(self, message: str) -> Any:
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    """The plugin's argument parser."""
    main = _Parser(prog=PROG, description="Lifeboat: SQLite disaster recovery on Kubernetes.")
    _connection_options(main, suppress=False)
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_, description=help_)
        _connection_options(sub, suppress=True)
        return sub

    status = command("status", "Show SQLiteReplicas: readiness, lag, TXID, pods, last restore and verification.")
    status.add_argument("name", nargs="?", metavar="NAME", help="one SQLiteReplica (default: all in the namespace)")
    status.add_argument("-o", "--output", choices=["table", "json"], default="table")

    restore = command("restore", "Restore a SQLiteReplica's backup with a SQLiteRestore and follow it to the end.")
    restore.add_argument("name", metavar="NAME", help="the SQLiteReplica")
    restore.add_argument("--to", metavar="TIME|TXID",
                         help="point in time: RFC 3339 time or 16-hex-digit TXID (default: the latest state)")
    restore.add_argument("--into", metavar="PVC",
                         help="restore into this PVC and leave the app alone (default: in place, the app is "
                              "stopped and started again)")
    restore.add_argument("--timeout", type=_positive, metavar="SECONDS",
                         help="stop following after this long (the restore goes on; default: until it ends)")

    verify = command("verify", "Verify a SQLiteReplica's backup now and wait for the result.")
    verify.add_argument("name", metavar="NAME")
    verify.add_argument("--timeout", type=_positive, default=DEFAULT_VERIFY_TIMEOUT, metavar="SECONDS",
                        help=f"how long to wait for the result (default: {DEFAULT_VERIFY_TIMEOUT:g})")

    for name, help_ in (("pause", "Stop replicating (spec.paused: true); the agents reload without a restart."),
                        ("resume", "Replicate again (clears spec.paused).")):
        command(name, help_).add_argument("name", metavar="NAME")

    logs = command("logs", "Print the agent sidecar's log of the SQLiteReplica's writer pod.")
    logs.add_argument("name", metavar="NAME")
    logs.add_argument("-f", "--follow", action="store_true", help="stream the log as it grows")
    logs.add_argument("--pod", help="the pod to read when several carry the replica's label")
    return main


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed command line; :class:`UsageError` for a bad one."""
    args = parser().parse_args(argv)
    if args.command == "restore" and args.to is not None:
        args.point = restore_point(args.to)
    elif args.command == "restore":
        args.point = {}
    return args
