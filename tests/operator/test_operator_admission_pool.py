"""What the operator's API reads cost: an admission never waits behind the status rounds' calls, and
the rounds of one namespace share one list of its followers."""

import asyncio
import json
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


async def test_one_list_of_a_namespaces_followers_serves_every_replicas_round() -> None:
    """The status rounds of a namespace's SQLiteReplicas share one list of its follower pods."""
    lifeboat = kube.Kube(kubernetes.client.ApiClient())
    selectors: list[str] = []

    def list_namespaced_pod(namespace: str, label_selector: str, **_: Any) -> SimpleNamespace:
        selectors.append(label_selector)
        pods = [{"metadata": {"name": f"reader-{r}", "labels": {"lifeboat.dev/follow": r}}} for r in ("a", "b")]
        return SimpleNamespace(data=json.dumps({"items": pods}).encode())

    lifeboat.core = SimpleNamespace(list_namespaced_pod=list_namespaced_pod)
    assert [p["metadata"]["name"] for p in await lifeboat.followers("apps", "a")] == ["reader-a"]
    assert [p["metadata"]["name"] for p in await lifeboat.followers("apps", "b")] == ["reader-b"]
    assert selectors == ["lifeboat.dev/follow"]
