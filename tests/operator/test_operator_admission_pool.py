"""What the operator's API reads cost: an admission never waits behind the status rounds' calls, nor
for a Namespace read before, and the rounds of one namespace share one list of its followers."""

import asyncio
import json
import threading
from types import SimpleNamespace
from typing import Any

import kubernetes
import pytest
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


def namespace_reads(release: threading.Event) -> tuple[list[str], Any]:
    """A stand-in for the API client's ``read_namespace``: each read is recorded, then waits for ``release``;
    the Namespace it returns carries the number of the read."""
    calls: list[str] = []

    def read_namespace(name: str, **_: Any) -> SimpleNamespace:
        calls.append(name)
        number = len(calls)
        release.wait(30)
        return SimpleNamespace(data=json.dumps({"metadata": {"name": name, "annotations": {"read": str(number)}}})
                               .encode())

    return calls, read_namespace


async def test_admissions_in_a_new_namespace_share_one_read_of_it() -> None:
    lifeboat = kube.Kube(kubernetes.client.ApiClient())
    release = threading.Event()
    calls, read = namespace_reads(release)
    lifeboat.core = SimpleNamespace(read_namespace=read)

    waiting = [asyncio.create_task(lifeboat.namespace("apps")) for _ in range(20)]
    await asyncio.sleep(0.2)  # every admission is waiting for the Namespace now
    release.set()
    found = await asyncio.wait_for(asyncio.gather(*waiting), timeout=30)

    assert calls == ["apps"]
    assert {f["metadata"]["annotations"]["read"] for f in found} == {"1"}


async def test_an_old_copy_is_served_while_it_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    lifeboat = kube.Kube(kubernetes.client.ApiClient())
    release = threading.Event()
    release.set()
    calls, read = namespace_reads(release)
    lifeboat.core = SimpleNamespace(read_namespace=read)
    assert (await lifeboat.namespace("apps"))["metadata"]["annotations"]["read"] == "1"
    monkeypatch.setattr(kube, "NAMESPACE_TTL", 0.0)
    release.clear()  # the API server is slow now

    # Not waiting for the API server: the copy read before, while it is read again.
    for _ in range(5):
        old = await asyncio.wait_for(lifeboat.namespace("apps"), timeout=10)
        assert old["metadata"]["annotations"]["read"] == "1"
    async with asyncio.timeout(30):  # the one refresh starts on a worker thread of its own time
        while len(calls) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert calls == ["apps", "apps"]

    release.set()
    async with asyncio.timeout(30):
        # Polled as the admissions see it: the refresh is the cache's own business.
        while (await lifeboat.namespace("apps"))["metadata"]["annotations"]["read"] == "1":  # noqa: ASYNC110
            await asyncio.sleep(0.05)
