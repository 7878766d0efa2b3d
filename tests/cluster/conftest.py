"""Fixtures: a real control plane (`.ci/cluster.sh`), the chart installed by helm, the operator as a process.

The session uses the control plane that is running (`scripts/test.sh` starts one); without one it starts
its own and stops it afterwards. A running control plane that already holds a release from an earlier
session is restarted empty first, and left running. No go: the tests are skipped (the binaries are built
from Go modules). A cold build takes long (about 20 minutes on two busy cores): `scripts/test.sh` runs
`.ci/cluster.sh build` before pytest, whose per-test timeout would otherwise cut it short.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from k8s import HELM, KUBECTL, OPERATOR_NAMESPACE, RELEASE, REPO, Cluster, Operator, readme_kubernetes_commands

CLUSTER_SH = REPO / ".ci" / "cluster.sh"


def _go() -> str | None:
    return shutil.which("go") or next((p for p in ("/usr/local/go/bin/go",) if Path(p).exists()), None)


def _cluster_sh(*args: str) -> str:
    proc = subprocess.run(["bash", str(CLUSTER_SH), *args], capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, f"cluster.sh {' '.join(args)} failed:\n{proc.stderr[-4000:]}"
    return proc.stdout.strip().rpartition("\n")[2]


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The control plane, empty of any earlier release."""
    if _go() is None:
        pytest.skip("go is not installed: the Kubernetes binaries are built from their Go modules")
    if not (KUBECTL.exists() and HELM.exists()):
        subprocess.run(["bash", str(REPO / ".ci" / "k8s-tools.sh")], check=True, capture_output=True)
    kubeconfig = Path(_cluster_sh("env").split("=", 1)[1])
    was_running = kubeconfig.exists() and Cluster(kubeconfig).kubectl(
        "get", "--raw", "/readyz", check=False).returncode == 0
    if was_running and Cluster(kubeconfig).kubectl("get", "namespace", OPERATOR_NAMESPACE, check=False).returncode == 0:
        _cluster_sh("stop")  # left over from an earlier session: start empty (and leave it running)
    kubeconfig = Path(_cluster_sh("start"))
    yield Cluster(kubeconfig)
    if not was_running:
        _cluster_sh("stop")


@pytest.fixture(scope="session")
def readme_commands() -> list[str]:
    commands = readme_kubernetes_commands()
    assert commands[0].startswith("helm install "), commands
    return commands


@pytest.fixture(scope="session")
def installed(cluster: Cluster, readme_commands: list[str]) -> Cluster:
    """The chart, installed with README's `helm install` line.

    The Deployment is then scaled to 0: its pods would run nowhere (kwok fakes them) and their fake IPs
    would join the webhook Service; the operator runs as a local process instead (`operator`).
    """
    cluster.run(readme_commands[0], timeout=300)
    cluster.kubectl("scale", "deployment", RELEASE, "-n", OPERATOR_NAMESPACE, "--replicas=0")
    return cluster


@pytest.fixture(scope="session")
def operator(installed: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The operator, running with the chart Deployment's arguments and ServiceAccount."""
    process = Operator.from_chart(installed, tmp_path_factory.mktemp("operator"))
    process.start()
    yield process
    process.stop()


@pytest.fixture(autouse=True)
def operator_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failing test shows the operator's log tail."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "operator" in request.fixturenames:
        print(request.getfixturevalue("operator").tail())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
