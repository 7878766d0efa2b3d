"""The cluster tests' tools: kubectl and helm against the test control plane, and the operator process.

The control plane is `.ci/cluster.sh` (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
kwok). The operator runs on this host as `lifeboat-operator`, with the arguments of the chart's
Deployment and the identity of the chart's ServiceAccount (a TokenRequest token): whatever the chart's
RBAC forgets fails here as it would in a pod. The API server reaches its webhook through the chart's
Service and an EndpointSlice that points at this host's own (non-loopback) address, where the operator
listens: the API server resolves webhook Services through their EndpointSlices
(`--enable-aggregator-routing`), and refuses loopback addresses in an EndpointSlice.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".ci-work" / "tools"
KUBECTL = TOOLS / "kubectl" / "kubectl"
HELM = TOOLS / "helm" / "helm"
RELEASE = "lifeboat"
OPERATOR_NAMESPACE = "lifeboat-system"
SERVICE = "lifeboat-webhook"
WEBHOOK_CONFIGURATION = "lifeboat"
S3_ENDPOINT = "http://127.0.0.1:18001"  # moto, from .ci/services.sh
EXAMPLE_ENDPOINT = "http://minio.storage.svc:9000"  # what examples/replica.yaml names
DEMO_NAMESPACE = "demo"


def host_address() -> str:
    """This host's first IPv4 address that an EndpointSlice may hold (neither loopback nor link-local)."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout.split()
    usable = [a for a in out if "." in a and not a.startswith(("127.", "169.254."))]
    assert usable, f"no non-loopback IPv4 address on this host (hostname -I: {out})"
    return usable[0]


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port nobody listens on right now, and none this session handed out before.

    An operator keeps its webhook port across restarts (the Service routes there), and while it is
    stopped that port is free: a liveness or metrics port picked then was, once, that very port, and
    the restarted operator's webhook failed to bind it.
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (and the last value)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@dataclass(frozen=True)
class Cluster:
    """kubectl and helm with one kubeconfig."""

    kubeconfig: Path

    def env(self) -> dict[str, str]:
        """The environment of a user whose kubectl and helm talk to this cluster."""
        # README's install line names the images by $REGISTRY: the ones `.ci/image-smoke.sh` builds.
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "REGISTRY": "localhost/lifeboat",
                "PATH": f"{KUBECTL.parent}:{HELM.parent}:{os.environ.get('PATH', '')}",
                "HELM_CACHE_HOME": str(self.kubeconfig.parent / "helm-cache"),
                "HELM_CONFIG_HOME": str(self.kubeconfig.parent / "helm-config")}

    def run(self, command: str | Sequence[str], *, input: str | None = None, check: bool = True,
            cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A command line (run by the shell, as a user types it) or an argv, with this cluster's env."""
        proc = subprocess.run(command, shell=isinstance(command, str), input=input, text=True,
                              capture_output=True, env=self.env(), cwd=cwd, timeout=timeout)
        if check and proc.returncode != 0:
            shown = command if isinstance(command, str) else shlex.join(command)
            raise AssertionError(f"{shown} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """kubectl with these arguments."""
        return self.run([str(KUBECTL), *args], input=input, check=check)

    def apply(self, *objects: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        """``kubectl apply`` these objects."""
        return self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects), check=check)

    def get(self, kind: str, name: str | None = None, *, namespace: str | None = None,
            selector: str | None = None) -> dict[str, Any]:
        """An object (or a list) as JSON."""
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        if selector:
            args += ["-l", selector]
        return json.loads(self.kubectl(*args).stdout)

    def exists(self, kind: str, name: str, namespace: str) -> bool:
        return self.kubectl("get", kind, name, "-n", namespace, check=False).returncode == 0

    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        """A Secret's keys and decoded values."""
        data = self.get("secret", name, namespace=namespace).get("data") or {}
        return {key: base64.b64decode(value).decode() for key, value in data.items()}

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        """A kubeconfig with a TokenRequest token of that ServiceAccount (what a pod of it would hold)."""
        token = self.kubectl("create", "token", name, "-n", namespace, "--duration=4h").stdout.strip()
        admin = yaml.safe_load(self.kubeconfig.read_text())
        cluster = admin["clusters"][0]
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [cluster],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": "sa"}}],
        }))
        path.chmod(0o600)
        return path


@dataclass
class Operator:
    """``lifeboat-operator`` as a local process, started with the chart Deployment's own arguments."""

    cluster: Cluster
    kubeconfig: Path  # the ServiceAccount's
    workdir: Path
    args: list[str]
    replica: str = "a"  # names its EndpointSlice: each replica adds its own endpoint to the Service
    account: str = RELEASE  # the chart Deployment's ServiceAccount
    webhook_port: int = field(default_factory=free_port)
    address: str = field(default_factory=host_address)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    env: dict[str, str] = field(default_factory=dict)  # extra environment (test-only settings)
    verbose: bool = True  # debug logging; a benchmark turns it off, as the chart's Deployment runs

    @classmethod
    def from_chart(cls, cluster: Cluster, workdir: Path, replica: str = "a") -> Operator:
        """The Deployment's command and args, with local ports and a local certificate directory."""
        deployment = cluster.get("deployment", RELEASE, namespace=OPERATOR_NAMESPACE)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["lifeboat-operator"], container["command"]
        account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        workdir.mkdir(parents=True, exist_ok=True)
        kubeconfig = cluster.service_account_kubeconfig(OPERATOR_NAMESPACE, account, workdir / "sa.kubeconfig")
        return cls(cluster, kubeconfig, workdir, list(container["args"]), replica, account)

    @property
    def log(self) -> Path:
        return self.workdir / "operator.log"

    def start(self) -> None:
        """Start it and wait until the API server's webhook calls reach it (the Service routes here).

        Each start gets a fresh token, as a new pod gets a freshly projected one: a token outlives
        neither its ServiceAccount nor a reinstall of the chart that recreates it (the API server then
        answers 401 to every call, and the operator never serves).
        """
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        self.cluster.service_account_kubeconfig(OPERATOR_NAMESPACE, self.account, self.kubeconfig)
        # Later flags win: the pod's ports and paths become this host's.
        argv = [str(Path(sys.executable).parent / "lifeboat-operator"), *self.args,
                f"--webhook-addr={self.address}", f"--webhook-port={self.webhook_port}",
                f"--tls-dir={self.workdir / 'tls'}", f"--liveness-port={free_port()}",
                f"--metrics-port={free_port()}", *(["--verbose"] if self.verbose else [])]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "POD_NAMESPACE": OPERATOR_NAMESPACE, **self.env}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with self.log.open("a") as log:
            log.write(f"==== start {self.starts}\n")
            log.flush()
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self._route_service()
        wait_until(self._serving, 90, "the operator's webhook behind its Service")

    def _serving(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, f"operator exited:\n{self.tail()}"
        configuration = self.cluster.get("mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION)
        if not all(w["clientConfig"].get("caBundle") for w in configuration["webhooks"]):
            return False
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((self.address, self.webhook_port)) == 0

    @property
    def endpoint_slice(self) -> str:
        return f"{SERVICE}-{self.replica}"

    def unroute(self) -> None:
        """Take this replica out of the Service (as a deleted pod leaves its EndpointSlice)."""
        self.cluster.kubectl("delete", "endpointslice", self.endpoint_slice, "-n", OPERATOR_NAMESPACE)

    def _route_service(self) -> None:
        """An EndpointSlice of the webhook Service with one endpoint: this host and the operator's port."""
        self.cluster.apply({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": self.endpoint_slice, "namespace": OPERATOR_NAMESPACE,
                         "labels": {"kubernetes.io/service-name": SERVICE}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [self.address], "conditions": {"ready": True}}],
            "ports": [{"name": "webhook", "port": self.webhook_port, "protocol": "TCP"}],
        })

    def stop(self) -> None:
        """SIGTERM, as the kubelet does; SIGKILL if it does not go."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text() if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def readme_kubernetes_commands() -> list[str]:
    """The command lines of README's "On Kubernetes" shell block that installs the chart (the one
    before it builds and pushes the images), without their comments."""
    text = (REPO / "README.md").read_text()
    section = text.split("## On Kubernetes", 1)[1]
    blocks = [b for b in re.findall(r"```sh\n(.*?)```", section, re.S) if "helm install" in b]
    assert blocks, "README's Kubernetes section has no ```sh block with helm install"
    return [line.split("#", 1)[0].strip() for line in blocks[0].splitlines() if line.split("#", 1)[0].strip()]


def example(name: str, directory: Path) -> Path:
    """An example manifest, unchanged apart from the storage endpoint (moto on loopback)."""
    text = (REPO / "examples" / name).read_text()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text.replace(EXAMPLE_ENDPOINT, S3_ENDPOINT))
    return path


def user_command(line: str, examples: Path) -> str:
    """A README command line as the tests run it: `examples/x.yaml` is the copy with moto's endpoint."""
    for name in ("replica.yaml", "app-deployment.yaml"):
        if f"examples/{name}" in line:
            line = line.replace(f"examples/{name}", str(example(name, examples)))
    return line


def pod_inputs(cluster: Cluster, pod: dict[str, Any]) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """(Secrets, ConfigMaps) a pod's containers read, as the API server holds them, for `podrun.Pod`."""
    namespace = pod["metadata"]["namespace"]
    specs = [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]
    secret_names = {s["secretRef"]["name"] for c in specs for s in c.get("envFrom") or [] if "secretRef" in s}
    secret_names |= {v["valueFrom"]["secretKeyRef"]["name"] for c in specs for v in c.get("env") or []
                     if "secretKeyRef" in (v.get("valueFrom") or {})}
    configmap_names = {v["configMap"]["name"] for v in pod["spec"].get("volumes") or [] if "configMap" in v}
    for name in configmap_names:  # a kubelet, too, waits for a ConfigMap volume's ConfigMap
        wait_until(lambda n=name: cluster.exists("configmap", n, namespace), 60, f"ConfigMap {name}")
    return ({name: cluster.secret_data(namespace, name) for name in secret_names},
            {name: cluster.get("configmap", name, namespace=namespace)["data"] for name in configmap_names})


def table(output: str) -> list[dict[str, str]]:
    """`kubectl get`'s table as rows of {column: text}, cut at the header's column starts (cells may be empty)."""
    header, *lines = output.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return [{name: line[a:b].strip() for name, (a, b) in zip(names, bounds, strict=True)} for line in lines]
