"""Test helpers shared by the operator tests: objects as users write them, kmock I/O, polling."""

import asyncio
import contextlib
import pathlib
import socket
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import kmock
import kopf
from lifeboat.operator import handlers, loops

NAMESPACE = "apps"
REPO = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_replica(name: str = "db", **spec: Any) -> dict[str, Any]:
    """A SQLiteReplica object as a user would apply it (spec fields override the defaults)."""
    return {
        "apiVersion": "lifeboat.dev/v1alpha1",
        "kind": "SQLiteReplica",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "database": "/data/app.db",
            "replica": {"url": "s3://backups/app", "endpoint": "http://minio:9000", "forcePathStyle": True,
                        "credentials": {"secretName": "s3-creds"}},
            "syncInterval": "1s",
            **spec,
        },
    }


def make_pod(replica: str = "db", **spec: Any) -> dict[str, Any]:
    """A pod as a Deployment's ReplicaSet sends it: generateName, no name, no namespace."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "app-7d9f-", "labels": {"app": "app", "lifeboat.dev/replica": replica}},
        "spec": {
            "containers": [{"name": "app", "image": "app:1",
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "app-data"}}],
            **spec,
        },
    }


async def create(k8s: kmock.KubernetesEmulator, path: str, body: dict[str, Any]) -> None:
    """POST an object to kmock, with the resourceVersion kmock never sets but kopf needs."""
    body = {**body, "metadata": {"resourceVersion": "1", "uid": f"uid-{body['metadata']['name']}",
                                 **body["metadata"]}}
    async with k8s.post(path, json=body) as response:
        assert response.status < 300, await response.text()


async def eventually(probe: Callable[[], Any], *, seconds: float = 15.0) -> Any:
    """Poll ``probe`` until it returns something truthy (the operator works asynchronously)."""
    async with asyncio.timeout(seconds):
        while True:
            if result := probe():
                return result
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def running_operator(options: handlers.Options) -> AsyncIterator[handlers.Options]:
    """The operator, as ``lifeboat-operator -n apps`` runs it, from its webhook port opening until exit.

    It runs in a thread with its own event loop of the kind production runs on (uvloop when installed):
    on exit kopf cancels every task of its loop, which would include the test's own.
    """
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with asyncio.Runner(loop_factory=loops.factory()) as runner:
                runner.run(kopf.operator(standalone=True, clusterwide=False, namespaces=[NAMESPACE],
                                         memo=kopf.Memo(options=options), stop_flag=stop))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="operator", daemon=True)
    thread.start()
    try:
        async with asyncio.timeout(20):
            while not failure:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", options.webhook_port)
                    writer.close()
                    break
                await asyncio.sleep(0.1)
        assert not failure, failure
        yield options
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 20)
    assert not thread.is_alive(), "the operator did not stop"
