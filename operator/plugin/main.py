"""``kubectl-lifeboat``'s entry point: parse, connect, run the command, and turn every failure into one line."""

import os
import sys
from collections.abc import Sequence

import urllib3
from kubernetes.client.exceptions import ApiException
from lifeboat.operator.plugin import args as arguments
from lifeboat.operator.plugin import commands
from lifeboat.operator.plugin.connect import PluginError, connect, describe


def run(argv: Sequence[str]) -> int:
    """Run one command line; raises :class:`PluginError` (or the client's exceptions) on failure."""
    args = arguments.parse(argv)
    conn = connect(args.kubeconfig, args.context, args.namespace)
    out = sys.stdout
    try:
        if args.command == "status":
            return commands.status(conn, args.name, args.output, out)
        if args.command == "restore":
            return commands.restore(conn, args.name, args.point, args.into, args.timeout, out)
        if args.command == "verify":
            return commands.verify(conn, args.name, args.timeout, out)
        if args.command in ("pause", "resume"):
            return commands.set_paused(conn, args.name, args.command == "pause", out)
        return commands.logs(conn, args.name, args.follow, args.pod, out)
    except BrokenPipeError:
        raise  # the reader went away (``| head``): not the API server's fault
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise PluginError(describe(exc, conn.server)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: exit 0 on success, 1 with one ``error:`` line on stderr otherwise."""
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except arguments.UsageError as exc:
        print(f"{arguments.PROG}: error: {exc} (see {arguments.PROG} --help)", file=sys.stderr)
        return 2
    except PluginError as exc:
        print(f"{arguments.PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader is gone: point stdout at /dev/null so that the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
