"""An admission's API reads never wait behind the status rounds' calls."""

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import kubernetes
from lifeboat.operator import kube


async def test_admission_reads_run_while_every_default_worker_is_busy() -> None:
    """Status rounds of many SQLiteReplicas can occupy every thread of the default executor; a read
    for an admission still runs (on the admission pool), where it used to queue until they ended."""
    lifeboat = kube.Kube(kubernetes.client.ApiClient())
    loop = asyncio.get_running_loop()
    release = threading.Event()
    busy = [loop.run_in_executor(None, release.wait) for _ in range(64)]  # more than the pool's threads

    def read(*_: Any, **__: Any) -> SimpleNamespace:
        return SimpleNamespace(data=b'{"kind": "Namespace"}')

    read.__name__ = "read_namespace"
    try:
        found = await asyncio.wait_for(lifeboat._call(read, "apps", admission=True), timeout=30)
        assert found == {"kind": "Namespace"}
    finally:
        release.set()
        await asyncio.gather(*busy)
