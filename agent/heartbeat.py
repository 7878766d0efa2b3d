"""`heartbeat-url`: an HTTP GET to a dead man's switch (healthchecks.io and the like), sent only
while every database is replicated within `heartbeat-interval`. A silent monitor then means the
replication stopped, whatever the reason: the agent died, hung, or cannot reach its replica."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from .server import readiness

log = logging.getLogger("lifeboat.heartbeat")

# Tests only: a shorter interval than the schema's minimum of one minute. Never documented.
INTERVAL_OVERRIDE_ENV = "LIFEBOAT_PRIVATE_HEARTBEAT_INTERVAL"
REQUEST_TIMEOUT = 10.0


class Heartbeat:
    """Sends the GET when due and healthy; counts what happened."""

    def __init__(self, url: str, interval: float, registry: CollectorRegistry) -> None:
        self.url = url
        self.interval = float(os.environ.get(INTERVAL_OVERRIDE_ENV) or interval)
        self.sent = Counter("lifeboat_heartbeat_sent", "Heartbeat requests answered with 2xx", registry=registry)
        self.failures = Counter(
            "lifeboat_heartbeat_failures", "Heartbeat requests that failed or got a non-2xx answer", registry=registry
        )
        self.skipped = Counter(
            "lifeboat_heartbeat_skipped", "Heartbeats withheld because a database was not replicated", registry=registry
        )

    async def run(self, statuses: Callable[[], list[dict[str, Any]]], stop: asyncio.Event) -> None:
        """Until `stop`: every interval, one GET if every database is replicated within it."""
        last_sent = last_withheld = float("-inf")
        # Check more often than the interval, so the first heartbeat goes out once replication is
        # up rather than one interval later.
        tick = min(self.interval, 5.0)
        while not stop.is_set():
            now = time.monotonic()
            if now - last_sent >= self.interval:
                ok, problems = readiness(statuses(), self.interval)
                if ok:
                    if await asyncio.to_thread(self._send):
                        last_sent = now
                elif now - last_withheld >= self.interval:  # said once per interval, not every tick
                    last_withheld = now
                    self.skipped.inc()
                    log.warning("heartbeat withheld: %s", "; ".join(problems))
            try:
                await asyncio.wait_for(stop.wait(), tick)
            except TimeoutError:
                pass

    def _send(self) -> bool:
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url, method="GET"), timeout=REQUEST_TIMEOUT) as r:
                r.read(1024)
        except (OSError, ValueError) as exc:  # URLError and HTTPError (non-2xx) are OSErrors
            self.failures.inc()
            log.warning("heartbeat to %s failed: %s", _redact(self.url), exc)
            return False
        self.sent.inc()
        return True


def _redact(url: str) -> str:
    """Heartbeat URLs often carry their secret in the path or query: log the host only."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/…"
