"""The operator at cluster scale, on the real control plane with kwok nodes.

`.ci/cluster.sh` runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (set
LIFEBOAT_APISERVER_PORT and LIFEBOAT_ETCD_PORT to use ports of your own); the chart is installed
with README's `helm install` line and the operator runs as a local process with the chart
Deployment's arguments and ServiceAccount (tests/cluster/k8s.py), without debug logging, as the
Deployment runs it. The benchmark creates ``replicas`` SQLiteReplicas in ``namespaces`` namespaces,
one Deployment per SQLiteReplica, and kwok nodes for ``pods`` pods at the kubelet's default of 110
pods a node. At each point of ``curve`` the Deployments are scaled so that that many labelled pods
exist: the controller-manager creates every pod, so every one passes the webhook. Then, at that
point:

* webhook admission latency: AdmissionReviews POSTed straight to the webhook's HTTPS endpoint, 50 in
  flight, by a Go client (``bench/admitload``; a Python one would cost the shared cores as much as the
  webhook does), with the operator's CPU per admission and its own histogram
  (``lifeboat_operator_admission_seconds``: the work, without TLS, HTTP and the wait for the event
  loop); and the API server's view of the pods it admitted while scaling
  (``apiserver_admission_webhook_admission_duration_seconds``, whose buckets are coarse);
* the operator's API requests per minute over a quiet minute: the API server's
  ``apiserver_flowcontrol_dispatched_requests_total`` of the ``service-accounts`` flow schema. The
  operator is the only client here that authenticates as a ServiceAccount (the control plane's
  components and kwok are ``system:masters``, flow schema ``exempt``), so that count is its own;
  and the operator's CPU over that minute (what it spends idle, taken off the admissions' CPU);
* the operator's RSS (VmRSS now, VmHWM the peak so far).

After the last point the operator is stopped, every agent ConfigMap deleted, and the operator started
again: the time until every SQLiteReplica's ConfigMap is back is how long its resume takes.

    python -P bench/scale_operator.py [--pods N] [--replicas N] [--namespaces N] [--curve 100,1000,5000]

writes ``bench/results/scale_operator.{json,md}`` (``--results NAME``: ``NAME.{json,md}``).
``bench/scale.py`` imports :func:`run` and :func:`markdown`; ``tests/cluster/test_cluster_scale_smoke.py``
runs the same code small.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "cluster"))
from k8s import (  # noqa: E402  (the cluster tests' tools, one directory over)
    HELM,
    KUBECTL,
    OPERATOR_NAMESPACE,
    RELEASE,
    SERVICE,
    WEBHOOK_CONFIGURATION,
    Cluster,
    Operator,
    readme_kubernetes_commands,
    wait_until,
)

logger = logging.getLogger("scale_operator")
CLUSTER_SH = REPO / ".ci" / "cluster.sh"
RESULTS = REPO / "bench" / "results"
GROUP, VERSION, PLURAL = "lifeboat.dev", "v1alpha1", "sqlitereplicas"
REPLICA_LABEL = "lifeboat.dev/replica"
AGENT_CONTAINER = "lifeboat-agent"
NAMESPACE_PREFIX = "scale-"
SECRET = "s3"
PODS_PER_NODE = 110  # the kubelet's default --max-pods
IN_FLIGHT = 50
WARMUP = 100  # admissions per point before the counted ones (connections, TLS sessions)
ADMISSIONS = 1000  # counted admissions per curve point and load
ALIKE = 50  # identical pods of one ReplicaSet in a row, in the scale-up and rollout load
QUIET_SECONDS = 60
WEBHOOK = "inject.pods.lifeboat.dev"
ADMISSION_HISTOGRAM = "lifeboat_operator_admission_seconds"  # the operator's own
GC_HISTOGRAM = "lifeboat_operator_gc_pause_seconds"
OPERATOR_FLOW_SCHEMA = "service-accounts"
TARGET_P99_MS = 20.0
TARGET_PEAK_RSS_MB = 300.0
# "Does not grow with the pod count": the last point's rate within this factor of the first's.
TARGET_REQUEST_GROWTH = 1.2
WORKERS = 8  # threads creating and scaling objects: the control plane, not this client, sets the pace


def _names(replicas: int, namespaces: int) -> list[tuple[str, str]]:
    """(namespace, SQLiteReplica name) of every replica, spread round-robin over the namespaces."""
    return [(f"{NAMESPACE_PREFIX}{i % namespaces:03d}", f"db-{i:05d}") for i in range(replicas)]


def _app(name: str) -> str:
    return name.replace("db-", "app-", 1)


def pod_template(replica: str) -> dict[str, Any]:
    """The Deployment's pod: labelled for its SQLiteReplica, its database on a volume at /data."""
    return {"metadata": {"labels": {"app": _app(replica), REPLICA_LABEL: replica}},
            "spec": {"containers": [{"name": "app", "image": "app:1",
                                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                     "volumes": [{"name": "data", "emptyDir": {}}]}}


def replica_body(namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SQLiteReplica",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"database": "/data/app.db",
                     "replica": {"url": f"s3://backups/{namespace}/{name}", "credentials": {"secretName": SECRET}}}}


def deployment_body(namespace: str, replica: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": _app(replica), "namespace": namespace},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": _app(replica)}},
                     "template": pod_template(replica)}}


def node_body(name: str) -> dict[str, Any]:
    """A kwok node (kwok's stages make it Ready), labelled as `.ci/cluster.sh`'s own."""
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                         "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                    "kubernetes.io/arch": "amd64", "type": "kwok"}}}


def spread(total: int, replicas: int) -> list[int]:
    """Pods per Deployment so that ``total`` pods exist: as even as integers allow."""
    return [total // replicas + (i < total % replicas) for i in range(replicas)]


# --- the control plane and the operator -------------------------------------------------------------


def control_plane() -> Cluster:
    """The running control plane on this session's ports, or a new one; kubectl and helm installed."""
    if not (KUBECTL.exists() and HELM.exists()):
        # The script runs python from its working directory: not the repository, whose operator/ shadows
        # the standard library's `operator`.
        subprocess.run(["bash", str(REPO / ".ci" / "k8s-tools.sh")], check=True, capture_output=True, cwd="/")
    proc = subprocess.run(["bash", str(CLUSTER_SH), "start"], capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f".ci/cluster.sh start failed:\n{proc.stderr[-4000:]}")
    return Cluster(Path(proc.stdout.strip().rpartition("\n")[2]))


def install(cluster: Cluster) -> None:
    """The chart by README's `helm install` line, unless installed; its Deployment at 0 replicas (its
    pods would run nowhere and their fake IPs would join the webhook Service: the operator is local)."""
    if cluster.run([str(HELM), "status", RELEASE, "-n", OPERATOR_NAMESPACE], check=False).returncode != 0:
        cluster.run(readme_kubernetes_commands()[0], timeout=300)
    cluster.kubectl("scale", "deployment", RELEASE, "-n", OPERATOR_NAMESPACE, "--replicas=0")


class Api:
    """The admin's API client, for what kubectl would do one object at a time."""

    def __init__(self, cluster: Cluster) -> None:
        client = kubernetes.config.new_client_from_config(str(cluster.kubeconfig))
        self.core = kubernetes.client.CoreV1Api(client)
        self.apps = kubernetes.client.AppsV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.cluster = cluster

    @staticmethod
    def each(fn: Callable[..., Any], argsets: Iterable[tuple[Any, ...]]) -> None:
        """``fn(*args)`` for every argset on a few threads; an object that exists already is fine."""
        def call(args: tuple[Any, ...]) -> None:
            try:
                fn(*args)
            except ApiException as exc:
                if exc.status != 409:
                    raise

        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(call, argsets))

    def ours(self, items: list[Any]) -> list[Any]:
        return [i for i in items if _namespace(i).startswith(NAMESPACE_PREFIX)]

    def replicas(self) -> list[dict[str, Any]]:
        listing = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        return self.ours(listing["items"])

    def configmaps(self) -> int:
        """How many agent ConfigMaps exist in the benchmark's namespaces."""
        return len(self.ours(self.core.list_config_map_for_all_namespaces(label_selector=REPLICA_LABEL).items))

    def pods(self) -> list[dict[str, Any]]:
        """The labelled pods, as JSON: the client's models cost seconds of CPU at thousands of pods."""
        response = self.core.list_pod_for_all_namespaces(label_selector=REPLICA_LABEL, _preload_content=False)
        return self.ours(json.loads(response.data)["items"])

    def refusals(self) -> list[str]:
        """Messages of pods the ReplicaSet controller could not create (a webhook denial is one)."""
        events = self.core.list_event_for_all_namespaces(field_selector="reason=FailedCreate").items
        return [f"{e.metadata.namespace}/{e.involved_object.name}: {e.message}" for e in self.ours(events)]


def _namespace(obj: Any) -> str:
    return obj["metadata"]["namespace"] if isinstance(obj, dict) else obj.metadata.namespace  # JSON or a model


def reconciled(api: Api, replicas: int) -> bool:
    """Every SQLiteReplica's status has seen its generation, and every one's ConfigMap exists."""
    seen = [r for r in api.replicas()
            if (r.get("status") or {}).get("observedGeneration") == r["metadata"].get("generation")]
    return len(seen) == replicas and api.configmaps() == replicas


def injected(pod: dict[str, Any]) -> bool:
    spec = pod["spec"]
    return any(c["name"] == AGENT_CONTAINER for c in [*(spec.get("initContainers") or []), *spec["containers"]])


def create_objects(api: Api, names: list[tuple[str, str]], nodes: int) -> None:
    """Namespaces, a credentials Secret in each, the SQLiteReplicas, their Deployments (at 0), the nodes."""
    namespaces = sorted({ns for ns, _ in names})
    api.each(api.core.create_namespace, [({"metadata": {"name": ns}},) for ns in namespaces])
    # The controller-manager gives each namespace its ServiceAccount; pods cannot be created before.
    for ns in namespaces:
        wait_until(lambda n=ns: _exists(lambda: api.core.read_namespaced_service_account("default", n)),
                   120, f"ServiceAccount default in {ns}")
    secret = {"metadata": {"name": SECRET},
              "stringData": {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}}
    api.each(api.core.create_namespaced_secret, [(ns, secret) for ns in namespaces])
    api.each(api.custom.create_namespaced_custom_object,
             [(GROUP, VERSION, ns, PLURAL, replica_body(ns, name)) for ns, name in names])
    api.each(api.apps.create_namespaced_deployment, [(ns, deployment_body(ns, name)) for ns, name in names])
    api.each(api.core.create_node, [(node_body(f"kwok-scale-{i}"),) for i in range(nodes)])


def settle(check: Callable[[], Any], timeout: float, what: str, interval: float) -> Any:
    """:func:`wait_until`, where an overloaded API server's refusal or timeout means "not yet"."""
    def tolerant() -> Any:
        try:
            return check()
        except ApiException as exc:
            if exc.status in (429, 500, 503, 504):
                return None
            raise

    return wait_until(tolerant, timeout, what, interval=interval)


def _exists(read: Callable[[], Any]) -> bool:
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def scale_to(api: Api, names: list[tuple[str, str]], total: int) -> None:
    """Scale the Deployments so that ``total`` labelled pods are wanted."""
    api.each(api.apps.patch_namespaced_deployment_scale,
             [(_app(name), ns, {"spec": {"replicas": n}}) for (ns, name), n in zip(names, spread(total, len(names)),
                                                                                   strict=True)])


def pods_settled(api: Api, total: int) -> dict[str, int] | None:
    """The pod counts once ``total`` labelled pods run, every one of them injected; else None."""
    pods = api.pods()
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    counts = {"pods": len(pods), "running": len(running), "injected": sum(map(injected, pods))}
    return counts if counts["running"] == total and counts["injected"] == total else None


# --- measurements ------------------------------------------------------------------------------------


def metrics(cluster: Cluster) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The API server's /metrics: per metric name, (labels, value) of each sample."""
    return parse_metrics(cluster.kubectl("get", "--raw", "/metrics").stdout)


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus' text format: per metric name, (labels, value) of each sample."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        found = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if found:
            labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', found.group(2) or ""))
            samples.setdefault(found.group(1), []).append((labels, float(found.group(3))))
    return samples


def operator_requests(samples: dict[str, list[tuple[dict[str, str], float]]]) -> float:
    """Requests the API server dispatched for the operator (its flow schema) so far."""
    return sum(v for labels, v in samples.get("apiserver_flowcontrol_dispatched_requests_total", [])
               if labels.get("flow_schema") == OPERATOR_FLOW_SCHEMA)


def all_requests(samples: dict[str, list[tuple[dict[str, str], float]]]) -> float:
    return sum(v for _, v in samples.get("apiserver_request_total", []))


def histogram(samples: dict[str, list[tuple[dict[str, str], float]]], name: str,
              match: Callable[[dict[str, str]], bool] = lambda _: True) -> dict[float, float]:
    """A histogram's cumulative buckets by upper bound, summed over the samples ``match`` selects."""
    buckets: dict[float, float] = {}
    for labels, value in samples.get(f"{name}_bucket", []):
        if match(labels):
            le = math.inf if labels["le"] == "+Inf" else float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + value
    return buckets


def webhook_buckets(samples: dict[str, list[tuple[dict[str, str], float]]]) -> dict[float, float]:
    """The API server's cumulative admission-duration buckets of the pod webhook (summed over `rejected`)."""
    return histogram(samples, "apiserver_admission_webhook_admission_duration_seconds",
                     lambda labels: labels.get("name") == WEBHOOK and labels.get("type") == "admit")


def bucket_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket holding the rank (seconds)."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0
    if not total:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if math.isinf(bound):
                return lower  # past the last finite bound: all that can be said
            return lower + (bound - lower) * (rank - below) / max(buckets[bound] - below, 1e-9)
        lower, below = bound, buckets[bound]
    return lower


def delta_view(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """A latency histogram's count, p50 and p99 (interpolated) and buckets between two samples."""
    delta = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}
    p50, p99 = bucket_quantile(0.5, delta), bucket_quantile(0.99, delta)
    return {"admissions": int(delta.get(math.inf, 0)),
            "p50_ms": None if p50 is None else round(p50 * 1000, 1),
            "p99_ms": None if p99 is None else round(p99 * 1000, 1),
            "buckets_le_ms": {("+Inf" if math.isinf(le) else f"{le * 1000:g}"): int(n)
                              for le, n in sorted(delta.items())}}


def gc_pauses(operator: Operator) -> dict[str, dict[str, float]]:
    """The operator's garbage-collection pauses so far, by generation: count, total seconds, and the
    cumulative buckets."""
    samples = operator_metrics(operator)
    found: dict[str, dict[str, Any]] = {}
    for generation in ("0", "1", "2"):
        def mine(labels: dict[str, str], generation: str = generation) -> bool:
            return labels.get("generation") == generation
        found[generation] = {
            "count": sum(v for labels, v in samples.get(f"{GC_HISTOGRAM}_count", []) if mine(labels)),
            "seconds": sum(v for labels, v in samples.get(f"{GC_HISTOGRAM}_sum", []) if mine(labels)),
            "buckets": histogram(samples, GC_HISTOGRAM, mine)}
    return found


def gc_delta(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Collections, their total pause (ms) and the upper bound of the bucket holding the longest pause
    (ms), per generation, between two readings of :func:`gc_pauses`."""
    delta = {}
    for generation, now in after.items():
        then = before.get(generation) or {"count": 0, "seconds": 0, "buckets": {}}
        grown = {le: n - then["buckets"].get(le, 0) for le, n in now["buckets"].items()}
        # Cumulative buckets: the smallest one holding every new pause bounds the longest.
        every = grown.get(math.inf, 0)
        longest = min((le for le, n in grown.items() if n == every), default=None) if every else None
        delta[generation] = {"count": int(now["count"] - then["count"]),
                             "total_ms": round((now["seconds"] - then["seconds"]) * 1000, 1),
                             "longest_le_ms": None if longest is None or math.isinf(longest)
                             else round(longest * 1000, 1)}
    return delta


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of a process, in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"current": int(fields["VmRSS"].split()[0]) / 1024, "peak": int(fields["VmHWM"].split()[0]) / 1024}


def review(namespace: str, replica: str, template: str = "5d8f7c9b4") -> dict[str, Any]:
    """The AdmissionReview an API server sends for a pod its Deployment's ReplicaSet creates (its uid
    a placeholder the client replaces). Pods of one ``template`` (one ReplicaSet) arrive identical:
    the API server names them after mutating admission."""
    pod = {"apiVersion": "v1", "kind": "Pod", **pod_template(replica)}
    pod["metadata"]["generateName"] = f"{_app(replica)}-{template}-"
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "__UID__", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "namespace": namespace, "operation": "CREATE",
                        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                        "object": pod, "oldObject": None, "dryRun": False}}


def review_lines(names: list[tuple[str, str]], count: int, *, alike: int, prefix: str) -> str:
    """``count`` AdmissionReviews, one per line: runs of ``alike`` pods of one ReplicaSet (a scale-up
    or a rollout) of SQLiteReplicas chosen at random; with ``alike`` 1, every pod is of a template never
    sent before (``prefix`` keeps the templates of several files apart)."""
    lines = []
    for run in range(-(-count // alike)):
        namespace, replica = random.choice(names)
        line = json.dumps(review(namespace, replica, f"{prefix}{run:06x}")) + "\n"
        lines += [line] * alike
    return "".join(lines[:count])


def admission_client() -> Path:
    """The Go load client (bench/admitload), built once per change of its source.

    A Python client with 50 requests in flight costs about as much CPU per request as the webhook
    itself, on the same two cores: its latencies would measure the client too. Go is there already:
    `.ci/cluster.sh` builds the control plane with it.
    """
    source = REPO / "bench" / "admitload" / "main.go"
    binary = REPO / ".ci-work" / "bin" / "admitload"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        binary.parent.mkdir(parents=True, exist_ok=True)
        go = shutil.which("go") or "/usr/local/go/bin/go"
        subprocess.run([go, "build", "-o", str(binary), source.name], cwd=source.parent, check=True,
                       env={**os.environ, "GOFLAGS": "", "GOWORK": "off"}, capture_output=True, timeout=600)
    return binary


def operator_metrics(operator: Operator) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The operator's own /metrics (its port: the last ``--metrics-port`` Operator.start passes)."""
    assert operator.proc is not None
    port = [a.split("=", 1)[1] for a in operator.proc.args if str(a).startswith("--metrics-port=")][-1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        return parse_metrics(response.read().decode())


def admission_latency(cluster: Cluster, operator: Operator, names: list[tuple[str, str]],
                      idle_cpu: float) -> dict[str, Any]:
    """Webhook latency with ``IN_FLIGHT`` admissions in flight, straight to the operator's endpoint.

    Two kinds of load: pods that are each of a template never sent before (``new``: what a node drain
    of many different apps sends, every answer computed), and the pods of scale-ups and rollouts
    (``alike``: runs of ``ALIKE`` identical pods of one ReplicaSet). Three views of each: the client's
    (bench/admitload: TLS, HTTP, the wait for the event loop, the work), the webhook's own histogram
    (the work alone), and the operator's CPU per counted admission less what it spends when idle
    (``idle_cpu``, CPU seconds per second, e.g. over the quiet minute).
    """
    workdir = operator.workdir / "admissions"
    workdir.mkdir(parents=True, exist_ok=True)
    configuration = cluster.get("mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION)
    (workdir / "ca.crt").write_bytes(base64.b64decode(configuration["webhooks"][0]["clientConfig"]["caBundle"]))

    def send(lines: str, count: int, warmup: int) -> dict[str, Any]:
        reviews = workdir / "reviews.jsonl"
        reviews.write_text(lines)
        proc = subprocess.run(
            [str(admission_client()), "-url", f"https://{operator.address}:{operator.webhook_port}/inject",
             "-ca", str(workdir / "ca.crt"), "-server-name", f"{SERVICE}.{OPERATOR_NAMESPACE}.svc",
             "-reviews", str(reviews), "-n", str(count), "-c", str(IN_FLIGHT),
             "-warmup", str(warmup), "-cpu-pid", str(_pid(operator))], capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"admitload failed:\n{proc.stderr[-2000:]}")
        return json.loads(proc.stdout)

    def measured(lines: str) -> dict[str, Any]:
        server_before = histogram(operator_metrics(operator), ADMISSION_HISTOGRAM)
        client = send(lines, ADMISSIONS, WARMUP)
        busy = max(0.0, client["server_cpu_seconds"] - idle_cpu * client["wall_seconds"])
        # The histogram counts the counted round's warm-up too: the same work.
        server = delta_view(server_before, histogram(operator_metrics(operator), ADMISSION_HISTOGRAM))
        return {**client, "refused": client["refused"] or [],
                "operator_cpu_ms_per_admission": round(busy / ADMISSIONS * 1000, 2),
                "client_cpu_ms_per_admission": round(client["client_cpu_seconds"] / ADMISSIONS * 1000, 2),
                "webhook_histogram": server}

    # A first round fills what the operator reads once (each namespace's Namespace), which would
    # otherwise be the histogram's tail; each counted round warms its own connections first. Every
    # round's templates are its own (the points of a curve share one operator).
    tag = f"{random.getrandbits(24):06x}"
    send(review_lines(names, WARMUP, alike=1, prefix=f"w{tag}"), WARMUP, 0)
    new = measured(review_lines(names, WARMUP + ADMISSIONS, alike=1, prefix=f"n{tag}"))
    alike = measured(review_lines(names, WARMUP + ADMISSIONS, alike=ALIKE, prefix=f"a{tag}"))
    return {**new, "alike": alike}


def quiet_minute(cluster: Cluster, operator: Operator) -> dict[str, float]:
    """Requests per minute, the operator's and everyone's, and the operator's CPU (cores busy), over
    ``QUIET_SECONDS`` with nothing changing."""
    before, cpu, start = metrics(cluster), cpu_seconds(_pid(operator)), time.monotonic()
    time.sleep(QUIET_SECONDS)
    after, elapsed = metrics(cluster), time.monotonic() - start
    per_minute = 60 / elapsed
    return {"operator": round((operator_requests(after) - operator_requests(before)) * per_minute, 1),
            "all_clients": round((all_requests(after) - all_requests(before)) * per_minute, 1),
            "operator_cpu": round((cpu_seconds(_pid(operator)) - cpu) / elapsed, 4)}


def restart(api: Api, operator: Operator, replicas: int) -> dict[str, Any]:
    """Stop the operator, delete every agent ConfigMap, start it: how long until all are back."""
    operator.stop()
    namespaces = sorted({_namespace(r) for r in api.replicas()})
    api.each(lambda ns: api.core.delete_collection_namespaced_config_map(ns, label_selector=REPLICA_LABEL),
             [(ns,) for ns in namespaces])
    settle(lambda: api.configmaps() == 0, 300, "the agent ConfigMaps gone", interval=2.0)
    start = time.monotonic()
    operator.start()
    serving = time.monotonic() - start
    # Listing every SQLiteReplica and ConfigMap costs the control plane too: not more than every 2 s.
    settle(lambda: reconciled(api, replicas), 1800, f"{replicas} SQLiteReplicas reconciled after a restart",
           interval=2.0)
    return {"reconcile_seconds": round(time.monotonic() - start, 1), "webhook_serving_seconds": round(serving, 1),
            "rss_mb": rss_mb(_pid(operator))}


def _pid(operator: Operator) -> int:
    assert operator.proc is not None
    return operator.proc.pid


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# --- the run -----------------------------------------------------------------------------------------


def run(pods: int, replicas: int, namespaces: int, curve: list[int]) -> dict:
    """Measure the operator at each pod count of ``curve`` (≤ ``pods``); the result as a dict."""
    if not (0 < namespaces <= replicas) or any(not 0 < c <= pods for c in curve) or curve != sorted(curve):
        raise ValueError(f"want 0 < namespaces ≤ replicas and 0 < curve points ≤ pods, rising "
                         f"(pods={pods}, replicas={replicas}, namespaces={namespaces}, curve={curve})")
    result: dict[str, Any] = {
        "parameters": {"pods": pods, "replicas": replicas, "namespaces": namespaces, "curve": curve,
                       "in_flight": IN_FLIGHT, "admissions_per_point": ADMISSIONS, "alike": ALIKE,
                       "quiet_seconds": QUIET_SECONDS, "pods_per_node": PODS_PER_NODE},
        "machine": {"cores": os.cpu_count(), "uptime_before": uptime()},
    }
    cluster = control_plane()
    install(cluster)
    api = Api(cluster)
    names = _names(replicas, namespaces)
    nodes = math.ceil(pods / PODS_PER_NODE)
    workdir = REPO / ".ci-work" / "scale-operator"
    operator = Operator.from_chart(cluster, workdir, replica="scale")
    operator.verbose = False
    operator.start()
    try:
        start = time.monotonic()
        create_objects(api, names, nodes)
        settle(lambda: reconciled(api, replicas), 1800, f"{replicas} SQLiteReplicas reconciled", interval=2.0)
        result["setup"] = {"nodes": nodes, "replicas_reconciled_seconds": round(time.monotonic() - start, 1)}
        logger.info("set up: %s", json.dumps(result["setup"]))
        result["curve"] = []
        for total in curve:
            result["curve"].append(point(cluster, api, operator, names, total))
            logger.info("measured at %d pods: %s", total, json.dumps(result["curve"][-1]))
            if not result["curve"][-1]["settled"]:
                break  # more pods would not get through either
        reached = result["curve"][-1]["pods"]
        result["restart"] = {"pods": reached, **restart(api, operator, replicas)}
        pods = api.pods()
        result["correctness"] = {
            "pods_expected": reached, "pods_running": sum(p["status"].get("phase") == "Running" for p in pods),
            "pods_injected": sum(map(injected, pods)), "replicas": replicas,
            "replicas_reconciled": reconciled(api, replicas), "refusals": (refusals := api.refusals())[:20],
            "refusal_count": len(refusals),
            "direct_refusals": sum(p["admission"]["refused_count"] + p["admission"]["alike"]["refused_count"]
                                   for p in result["curve"])}
    finally:
        operator.stop()
        operator.unroute()  # the Service must not send the API server's calls to a stopped process
        result["machine"]["uptime_after"] = uptime()
    result["targets"] = targets(result)
    return result


def point(cluster: Cluster, api: Api, operator: Operator, names: list[tuple[str, str]], total: int) -> dict:
    """Scale to ``total`` pods and measure there."""
    before, start, collected = webhook_buckets(metrics(cluster)), time.monotonic(), gc_pauses(operator)
    scale_to(api, names, total)
    try:
        settle(lambda: pods_settled(api, total), 600 + total / 2, f"{total} pods running and injected",
               interval=5.0)
        settled = True
    except AssertionError:  # measured all the same: what the operator does when pods do not get through
        settled = False
    scaled = time.monotonic() - start
    pods = api.pods()
    apiserver = delta_view(before, webhook_buckets(metrics(cluster)))
    requests = quiet_minute(cluster, operator)
    admission = admission_latency(cluster, operator, names, requests["operator_cpu"])
    return {"pods": total, "settled": settled, "pods_created": len(pods), "pods_injected": sum(map(injected, pods)),
            "scale_up_seconds": round(scaled, 1), "admission": admission, "apiserver_admission": apiserver,
            "requests_per_minute": requests, "rss_mb": rss_mb(_pid(operator)),
            "gc_pauses": gc_delta(collected, gc_pauses(operator))}


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Each target, with the measured value and whether it is met."""
    curve = result.get("curve") or []
    if not curve:
        return {}
    worst_p99 = max(p["admission"]["p99_ms"] for p in curve)
    peak = max([p["rss_mb"]["peak"] for p in curve] + [result.get("restart", {}).get("rss_mb", {}).get("peak", 0)])
    rates = [p["requests_per_minute"]["operator"] for p in curve]
    growth = rates[-1] / rates[0] if rates[0] else math.inf
    return {
        "every_pod_admitted": {"target": "every pod of every point", "measured": f"{curve[-1]['pods_injected']:,} "
                               f"of {curve[-1]['pods']:,}", "met": all(p["settled"] for p in curve)},
        "admission_p99_ms": {"target": TARGET_P99_MS, "measured": worst_p99, "met": worst_p99 <= TARGET_P99_MS},
        "peak_rss_mb": {"target": TARGET_PEAK_RSS_MB, "measured": round(peak, 1), "met": peak <= TARGET_PEAK_RSS_MB},
        "requests_per_minute_growth": {"target": TARGET_REQUEST_GROWTH, "measured": round(growth, 2),
                                       "per_point": rates, "met": growth <= TARGET_REQUEST_GROWTH},
    }


def markdown(result: dict) -> str:
    """The result as a Markdown section: the growth curve, the restart, the targets, correctness."""
    p = result["parameters"]
    lines = [
        "## Operator at scale",
        "",
        f"{p['replicas']:,} SQLiteReplicas in {p['namespaces']} namespaces, up to {p['pods']:,} labelled pods "
        f"(one Deployment per SQLiteReplica) on {result.get('setup', {}).get('nodes', '?')} kwok nodes; "
        f"{p['admissions_per_point']:,} direct admissions per point and load, {p['in_flight']} in flight: pods "
        f"each of a template never sent before (new), and runs of {p.get('alike', ALIKE)} identical pods of one "
        "ReplicaSet (alike: a scale-up or a rollout). The target is judged on new pods, the worst case. "
        f"{result['machine']['cores']} cores.",
        "",
        f"- load before: `{result['machine']['uptime_before']}`",
        f"- load after: `{result['machine'].get('uptime_after', '?')}`",
        "",
        "| pods | scale-up s | admission p50 / p99 / max ms (direct, new pods) | admissions/s | operator CPU ms per "
        "admission | webhook's own p50 / p99 ms | pods alike: p50 / p99 ms, admissions/s, CPU ms | "
        "API server's view p50 / p99 ms (n) | operator req/min | all clients req/min | RSS now / peak MB |",
        "|---:|---:|---|---:|---:|---|---|---|---:|---:|---|",
    ]
    for point_ in result.get("curve") or []:
        a, s, r, m = point_["admission"], point_["apiserver_admission"], point_["requests_per_minute"], point_["rss_mb"]
        own = a["webhook_histogram"]
        alike = a.get("alike") or {}
        alike_cell = (f"{alike['p50_ms']} / {alike['p99_ms']}, {alike['per_second']}, "
                      f"{alike['operator_cpu_ms_per_admission']}" if alike else "")
        reached = "" if point_["settled"] else f" (**{point_['pods_injected']:,} got through**)"
        lines.append(f"| {point_['pods']:,}{reached} | {point_['scale_up_seconds']} | {a['p50_ms']} / {a['p99_ms']} / "
                     f"{a['max_ms']} | {a['per_second']} | {a['operator_cpu_ms_per_admission']} | "
                     f"{own['p50_ms']} / {own['p99_ms']} | {alike_cell} | "
                     f"{s['p50_ms']} / {s['p99_ms']} ({s['admissions']}) | "
                     f"{r['operator']} | {r['all_clients']} | {m['current']:.0f} / {m['peak']:.0f} |")
    pauses = [(point_["pods"], point_["gc_pauses"]["2"]) for point_ in result.get("curve") or []
              if point_.get("gc_pauses")]
    if pauses:
        lines += ["", "Full garbage collections (generation 2) in each point (scale-up, quiet minute, admissions): "
                  + "; ".join(f"{pods:,} pods: {g['count']}, {g['total_ms']} ms in all, longest ≤ "
                              f"{g['longest_le_ms']} ms" for pods, g in pauses) + "."]
    restart_ = result.get("restart")
    if restart_:
        lines += ["", f"Restart at {restart_['pods']:,} pods: every agent ConfigMap back "
                      f"{restart_['reconcile_seconds']} s after the operator was started (webhook serving after "
                      f"{restart_['webhook_serving_seconds']} s); RSS then {restart_['rss_mb']['current']:.0f} MB, "
                      f"peak {restart_['rss_mb']['peak']:.0f} MB."]
    setup = result.get("setup")
    if setup:
        lines += ["", f"Initial reconcile of {p['replicas']:,} new SQLiteReplicas: "
                      f"{setup['replicas_reconciled_seconds']} s (includes creating them and their Deployments)."]
    names = {"every_pod_admitted": "pods created through the webhook ({t})",
             "admission_p99_ms": "admission p99 ≤ {t} ms with 50 in flight",
             "peak_rss_mb": "operator peak RSS ≤ {t} MB",
             "requests_per_minute_growth": "operator requests/min, last point ÷ first ≤ {t}"}
    lines += ["", "| target | measured | met |", "|---|---:|---|"]
    for key, target in (result.get("targets") or {}).items():
        lines.append(f"| {names[key].format(t=target['target'])} | {target['measured']} | "
                     f"{'yes' if target['met'] else '**no**'} |")
    c = result.get("correctness")
    if c:
        lines += ["", f"Correctness: {c['pods_running']:,}/{c['pods_expected']:,} pods running, "
                      f"{c['pods_injected']:,} injected; SQLiteReplicas all reconciled: {c['replicas_reconciled']}; "
                      f"refused pod creations: {c['refusal_count']}; "
                      f"refused direct admissions: {c['direct_refusals']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--replicas", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--curve", default="100,1000,5000",
                        help="pod counts to measure at (comma-separated); points above --pods are dropped, "
                             "--pods itself is always the last")
    parser.add_argument("--results", default="scale_operator",
                        help="results file name under bench/results/ (.json and .md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    curve = sorted({c for c in map(int, args.curve.split(",")) if c < args.pods} | {args.pods})
    result = run(args.pods, args.replicas, args.namespaces, curve)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.results}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.results}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
