"""`replicate -exec CMD`: the application as the agent's child, the single-container pattern.

The agent replicates while the child runs. SIGTERM and SIGINT go to the child, not to replication:
the child decides when it is done, and every commit it makes before exiting is still captured. When
it exits, the agent makes its final sync and exits with the child's status (128 + N when a signal
N killed it, as shells report), so a Job or a restart policy sees the application's result.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import signal

log = logging.getLogger("lifeboat")
FORWARDED = (signal.SIGTERM, signal.SIGINT)


def parse_command(cmd: str) -> list[str]:
    """Split `-exec`'s string as a shell would split words (no expansion, no pipes)."""
    try:
        argv = shlex.split(cmd)
    except ValueError as exc:
        raise ValueError(f"invalid -exec command {cmd!r}: {exc}") from None
    if not argv:
        raise ValueError("-exec command is empty")
    return argv


class Child:
    """The running child process; `stop` is set when it exits."""

    def __init__(self, proc: asyncio.subprocess.Process, argv: list[str]) -> None:
        self.proc = proc
        self.argv = argv

    @classmethod
    async def start(cls, argv: list[str]) -> Child:
        """Start `argv` with the agent's environment, stdin, stdout and stderr."""
        try:
            proc = await asyncio.create_subprocess_exec(*argv)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot start -exec command {argv[0]!r}: {exc.strerror}") from None
        log.info("started %s (pid %d)", shlex.join(argv), proc.pid)
        return cls(proc, argv)

    def forward_signals(self) -> None:
        """From now on SIGTERM and SIGINT go to the child."""
        loop = asyncio.get_running_loop()
        for sig in FORWARDED:
            loop.add_signal_handler(sig, self._forward, sig)

    def _forward(self, sig: signal.Signals) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def wait(self, stop: asyncio.Event) -> None:
        """Until the child exits; then ask replication to stop (final sync follows)."""
        code = await self.proc.wait()
        log.info("%s exited with %s; final sync", self.argv[0], self.describe(code))
        stop.set()

    async def terminate(self, grace: float = 30.0) -> None:
        """Replication stopped on its own (lost lease): stop the child too, SIGKILL after `grace`."""
        if self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def exit_code(self) -> int:
        """The child's status as the agent's exit status."""
        code = self.proc.returncode
        assert code is not None
        return 128 - code if code < 0 else code

    @staticmethod
    def describe(code: int) -> str:
        if code < 0:
            return f"signal {signal.Signals(-code).name}"
        return f"status {code}"
