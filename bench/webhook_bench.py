"""Admission latency of the operator's mutating webhook, started the way tests/operator does.

kmock serves the Kubernetes API over HTTP; the real operator (kopf, in a thread with its own loop)
serves the webhook over HTTPS with a generated certificate; N pod AdmissionReviews are POSTed one
after another over a keep-alive connection, as an API server does. Prints one JSON object.

    python bench/webhook_bench.py [N]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

import aiohttp
import kmock
import kopf
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
NAMESPACE = "apps"


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "app-7d9f-", "labels": {"app": "app", "lifeboat.dev/replica": "db"}},
        "spec": {"containers": [{"name": "app", "image": "app:1",
                                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "app-data"}}]},
    }


def review() -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": NAMESPACE,
                    "operation": "CREATE", "userInfo": {"username": "system:serviceaccount:kube-system:rs"},
                    "object": pod(), "oldObject": None, "dryRun": False},
    }


async def main(n: int) -> dict[str, Any]:
    from lifeboat.operator import handlers, webhook

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="lifeboat-webhook-bench-"))
    async with kmock.KubernetesEmulator() as k8s, kmock.Server(k8s, host="127.0.0.1") as server:
        k8s.resources.load_bundled()
        crd = yaml.safe_load((REPO / "crds" / "sqlitereplicas.yaml").read_text())
        names = crd["spec"]["names"]
        k8s.resources[f"lifeboat.dev/v1alpha1/{names['plural']}"] = kmock.ResourceInfo(
            kind=names["kind"], singular=names["singular"], namespaced=True, shortnames=set(names["shortNames"]),
            categories=set(names["categories"]), verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            subresources={"status"})
        kubeconfig = {
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": str(k8s.url).rstrip("/")}}],
            "users": [{"name": "bench", "user": {"token": "bench-token"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "bench"}}],
        }
        (tmp / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
        os.environ["KUBECONFIG"] = str(tmp / "kubeconfig")
        os.environ.pop("KUBERNETES_SERVICE_HOST", None)
        replica = {
            "apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteReplica",
            "metadata": {"name": "db", "namespace": NAMESPACE, "resourceVersion": "1", "uid": "uid-db"},
            "spec": {"database": "/data/app.db", "replica": {"url": "s3://backups/app"}, "syncInterval": "1s"},
        }
        async with k8s.post(f"/apis/lifeboat.dev/v1alpha1/namespaces/{NAMESPACE}/sqlitereplicas",
                            json=replica) as resp:
            assert resp.status < 300, await resp.text()
        tls = webhook.generate_certificate(["localhost", "127.0.0.1"])
        tls.write(tmp / "tls")
        options = handlers.Options(namespaces=(NAMESPACE,), webhook_addr="127.0.0.1", webhook_port=free_port(),
                                   tls_dir=tmp / "tls", agent_image="lifeboat:bench")
        stop = threading.Event()

        def run() -> None:
            asyncio.run(kopf.operator(standalone=True, clusterwide=False, namespaces=[NAMESPACE],
                                      memo=kopf.Memo(options=options), stop_flag=stop))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            async with asyncio.timeout(30):
                while True:
                    with contextlib.suppress(OSError):
                        _, w = await asyncio.open_connection("127.0.0.1", options.webhook_port)
                        w.close()
                        break
                    await asyncio.sleep(0.1)
            ctx = ssl.create_default_context(cadata=tls.ca.decode())
            url = f"https://127.0.0.1:{options.webhook_port}/inject"
            times: list[float] = []
            async with aiohttp.ClientSession() as session:
                for i in range(n + 10):  # 10 warm-up admissions, not counted
                    body = review()
                    t0 = time.perf_counter()
                    async with session.post(url, json=body, ssl=ctx) as resp:
                        answer = await resp.json()
                    dt = time.perf_counter() - t0
                    assert answer["response"]["allowed"] is True and "patch" in answer["response"], answer
                    if i >= 10:
                        times.append(dt)
                    # kmock keeps every request it served and matches each new one against that
                    # history (O(n)): left alone, the emulator, not the operator, sets the trend.
                    for history in (getattr(k8s, "_requests", None), getattr(server, "_requests", None)):
                        if isinstance(history, list):
                            history.clear()
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 20)
    # Mean latency per successive hundred admissions: shows whether it grows with the count.
    trend = [statistics.fmean(times[i : i + 100]) * 1000 for i in range(0, len(times), 100)]
    times.sort()

    def pct(p: float) -> float:  # nearest rank
        return times[min(len(times) - 1, max(0, round(p / 100 * len(times) + 0.5) - 1))] * 1000

    return {"admissions": n, "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": times[-1] * 1000,
            "mean_ms": statistics.fmean(times) * 1000, "mean_ms_per_100": trend}


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)
    print(json.dumps(asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 500))))
