"""``kubectl-lifeboat`` on the real API server: every command run as the installed console script, in a
subprocess, with a kubeconfig whose context names the namespace (no ``-n``), as a user runs it.

The operator runs as a local process (conftest). The app is `inplace`'s: a Deployment whose pod carries the
replica label and is injected, kwok fakes it. Restores are driven as in test_cluster_day2.py: kwok ends the
restore Job's pod when the test annotates it (here with a made-up successful result).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import inplace
import pytest
import yaml
from inplace import REPLICA, bound_claim
from k8s import KUBECTL, Cluster, Operator, free_port, host_address, wait_until

NAMESPACE = "plugin"
LONELY = "lonely"  # a SQLiteReplica no pod carries the label of
PLUGIN = Path(sys.executable).parent / "kubectl-lifeboat"
CRD = "sqlitereplicas.lifeboat.dev"
# status.lastVerification as the operator's verification writes it (added to the served CRD if missing).
LAST_VERIFICATION_SCHEMA = {
    "type": "object",
    "properties": {
        "time": {"type": "string", "format": "date-time"},
        "txid": {"type": "string", "nullable": True},
        "target": {"type": "string"},
        "duration": {"type": "string", "nullable": True},
        "result": {"type": "string", "enum": ["Succeeded", "Failed"]},
        "message": {"type": "string"},
        "requested": {"type": "string", "nullable": True},
    },
}


def kubeconfig_with_namespace(admin: Path, path: Path, namespace: str) -> Path:
    """The admin kubeconfig with its context set to ``namespace``."""
    config = yaml.safe_load(admin.read_text())
    for context in config["contexts"]:
        context["context"]["namespace"] = namespace
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class Plugin:
    """The console script with one kubeconfig (and nothing else of the test's environment)."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    def env(self) -> dict[str, str]:
        return {"PATH": f"{PLUGIN.parent}:{KUBECTL.parent}:/usr/bin:/bin", "KUBECONFIG": str(self.kubeconfig),
                "HOME": str(self.kubeconfig.parent)}

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([str(PLUGIN), *args], env=self.env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(PLUGIN), *args], env=self.env(), text=True, capture_output=True,
                              timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The failure's stderr: a single ``error:`` line, no traceback."""
    assert proc.returncode != 0, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kubectl-lifeboat: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def replica_object(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.get("sqlitereplica", name, namespace=NAMESPACE)


def serve_last_verification(cluster: Cluster) -> None:
    """The served CRD keeps status.lastVerification (where the operator's verification is not installed yet,
    the API server would prune it)."""
    crd = cluster.get("crd", CRD)
    version = next(i for i, v in enumerate(crd["spec"]["versions"]) if v["name"] == "v1alpha1")
    status = crd["spec"]["versions"][version]["schema"]["openAPIV3Schema"]["properties"]["status"]
    if "lastVerification" in status["properties"]:
        return
    path = f"/spec/versions/{version}/schema/openAPIV3Schema/properties/status/properties/lastVerification"
    cluster.kubectl("patch", "crd", CRD, "--type=json",
                    "-p", json.dumps([{"op": "add", "path": path, "value": LAST_VERIFICATION_SCHEMA}]))


@pytest.fixture(scope="module")
def plugin(operator: Operator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugin]:
    """The namespace with the app (replica ``db``), a claim to restore into, and a replica without pods."""
    cluster = operator.cluster
    cluster.kubectl("create", "namespace", NAMESPACE)
    serve_last_verification(cluster)
    cluster.apply(*bound_claim(NAMESPACE, "restored"),
                  {"apiVersion": "lifeboat.dev/v1alpha1", "kind": "SQLiteReplica",
                   "metadata": {"name": LONELY, "namespace": NAMESPACE},
                   "spec": {"database": "/data/lonely.db", "replica": {"url": "s3://backups/plugin/lonely"}}})
    inplace.deploy(cluster, NAMESPACE)
    directory = tmp_path_factory.mktemp("plugin")
    yield Plugin(kubeconfig_with_namespace(cluster.kubeconfig, directory / "kubeconfig", NAMESPACE))


def rows(output: str) -> dict[str, list[str]]:
    """The status table's rows by name: cells are three or more spaces apart."""
    header, *lines = output.strip().splitlines()
    assert re.split(r" {3,}", header)[:3] == ["NAME", "DATABASE", "READY"], header
    return {cells[0]: cells for cells in (re.split(r" {3,}", line) for line in lines)}


def test_status_shows_every_replica_and_one_as_json(plugin: Plugin, operator: Operator) -> None:
    cluster = operator.cluster

    def ready_reason() -> str | None:
        found = [c for c in (replica_object(cluster, LONELY).get("status") or {}).get("conditions") or []
                 if c["type"] == "Ready"]
        return found[0].get("reason") if found else None

    wait_until(lambda: ready_reason() == "NoPods", 60, "the operator's Ready condition on the lonely replica")
    verification = {"time": "2024-05-01T12:00:05Z", "requested": "2024-05-01T12:00:00Z", "result": "Failed",
                    "target": "latest", "message": "integrity_check: not ok"}
    cluster.kubectl("patch", "sqlitereplica", LONELY, "-n", NAMESPACE, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"lastVerification": verification}}))

    listed = plugin("status")
    assert listed.returncode == 0, listed.stderr
    table = rows(listed.stdout)
    assert set(table) == {REPLICA, LONELY}
    assert table[LONELY][1:4] == ["/data/lonely.db", "False (NoPods)", "no"]
    assert table[LONELY][-1] == "Failed 2024-05-01T12:00:05Z"

    shown = plugin("status", LONELY, "-o", "json")
    assert shown.returncode == 0, shown.stderr
    row = json.loads(shown.stdout)
    assert (row["name"], row["namespace"], row["ready"], row["readyReason"]) == (LONELY, NAMESPACE, "False", "NoPods")
    assert row["lastVerification"] == verification

    # kubectl finds it on PATH as `kubectl lifeboat`.
    through_kubectl = subprocess.run([str(KUBECTL), "lifeboat", "status", LONELY], env=plugin.env(), text=True,
                                     capture_output=True, timeout=120)
    assert through_kubectl.returncode == 0, through_kubectl.stderr
    assert set(rows(through_kubectl.stdout)) == {LONELY}


def test_pause_and_resume_set_and_clear_spec_paused(plugin: Plugin, operator: Operator) -> None:
    cluster = operator.cluster
    paused = plugin("pause", LONELY)
    assert paused.returncode == 0, paused.stderr
    assert replica_object(cluster, LONELY)["spec"]["paused"] is True
    config = f"{LONELY}-lifeboat"
    wait_until(lambda: "paused: true" in cluster.get("configmap", config, namespace=NAMESPACE)["data"]["lifeboat.yml"],
               60, "paused in the agent config")
    assert rows(plugin("status", LONELY).stdout)[LONELY][3] == "yes"

    resumed = plugin("resume", LONELY)
    assert resumed.returncode == 0, resumed.stderr
    assert "paused" not in replica_object(cluster, LONELY)["spec"]
    wait_until(lambda: "paused" not in cluster.get("configmap", config, namespace=NAMESPACE)["data"]["lifeboat.yml"],
               60, "paused gone from the agent config")


def answer_verification(cluster: Cluster, name: str, result: str, message: str) -> str:
    """Wait for the verify-requested annotation, then answer it as the operator would: this simulates the
    operator's verification by patching status.lastVerification with ``requested`` equal to it."""
    requested = wait_until(
        lambda: replica_object(cluster, name)["metadata"].get("annotations", {}).get("lifeboat.dev/verify-requested"),
        60, "the verify-requested annotation")
    answer = {"time": requested, "requested": requested, "result": result, "target": "latest",
              "txid": "00000000000000a3", "duration": "2s", "message": message}
    cluster.kubectl("patch", "sqlitereplica", name, "-n", NAMESPACE, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"lastVerification": answer}}))
    return str(requested)


def test_verify_requests_a_verification_and_waits_for_its_answer(plugin: Plugin, operator: Operator) -> None:
    """The operator's answer is simulated (status.lastVerification patched by the test)."""
    cluster = operator.cluster
    passing = plugin.popen("verify", REPLICA, "--timeout", "90")
    requested = answer_verification(cluster, REPLICA, "Succeeded", "restored and checked")
    out, err = passing.communicate(timeout=120)
    assert passing.returncode == 0, err
    assert f"verification requested at {requested}" in out
    assert "result Succeeded, txid 00000000000000a3" in out

    failing = plugin.popen("verify", REPLICA, "--timeout", "90")
    wait_until(lambda: replica_object(cluster, REPLICA)["metadata"]["annotations"]
               ["lifeboat.dev/verify-requested"] != requested, 60, "a new verify-requested annotation")
    answer_verification(cluster, REPLICA, "Failed", "integrity_check: not ok")
    out, err = failing.communicate(timeout=120)
    line = one_error_line(subprocess.CompletedProcess([], failing.returncode, out, err))
    assert "did not succeed: Failed: integrity_check: not ok" in line


def test_verify_gives_up_after_its_timeout(plugin: Plugin) -> None:
    line = one_error_line(plugin("verify", LONELY, "--timeout", "2"))
    assert "timed out waiting for the verification of sqlitereplica/lonely" in line


def follow_restore(plugin: Plugin, cluster: Cluster, *args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run ``restore`` and end its Job's pod successfully once it exists: (the plugin's run, the restore's name)."""
    proc = plugin.popen("restore", *args)
    created = set()

    def job() -> str | None:
        for item in cluster.get("sqliterestore", namespace=NAMESPACE)["items"]:
            if item["metadata"]["name"] not in created and (item.get("status") or {}).get("job"):
                return str(item["status"]["job"])
        return None

    for item in cluster.get("sqliterestore", namespace=NAMESPACE)["items"]:
        if (item.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            created.add(item["metadata"]["name"])
    name = wait_until(job, 120, "the restore Job")
    inplace.end_job(cluster, NAMESPACE, name)
    out, err = proc.communicate(timeout=180)
    (first, *_) = out.splitlines() or [""]
    restore_name = first.split()[0].removeprefix("sqliterestore/") if first else ""
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), restore_name


def test_restore_in_place_to_a_time_follows_every_phase(plugin: Plugin, operator: Operator) -> None:
    cluster = operator.cluster
    run, name = follow_restore(plugin, cluster, REPLICA, "--to", "2024-05-01T14:00:00+02:00")
    assert run.returncode == 0, run.stdout + run.stderr
    restore = cluster.get("sqliterestore", name, namespace=NAMESPACE)
    assert restore["spec"]["target"] == "inPlace"
    assert restore["spec"]["timestamp"] == "2024-05-01T12:00:00Z"
    phases = [line.split(":")[0] for line in run.stdout.splitlines()[1:]]
    assert phases[-3:] == ["Restoring", "ScalingUp", "Succeeded"], run.stdout
    assert inplace.replicas(cluster, NAMESPACE) == 1
    table = rows(plugin("status", REPLICA).stdout)
    assert table[REPLICA][7].startswith("Succeeded "), table


def test_restore_into_a_pvc_to_a_txid(plugin: Plugin, operator: Operator) -> None:
    cluster = operator.cluster
    run, name = follow_restore(plugin, cluster, REPLICA, "--to", "00000000000000a3", "--into", "restored")
    assert run.returncode == 0, run.stdout + run.stderr
    spec = cluster.get("sqliterestore", name, namespace=NAMESPACE)["spec"]
    assert (spec["target"], spec["txid"]) == ({"pvc": "restored"}, "00000000000000a3")
    assert run.stdout.splitlines()[-1].startswith("Succeeded")


def test_a_failed_restore_exits_non_zero_with_its_message(plugin: Plugin) -> None:
    line = one_error_line(plugin("restore", LONELY, timeout=180))
    assert "failed: cannot identify the workload to stop" in line


def test_logs_says_in_one_line_why_it_cannot_read_a_log(plugin: Plugin, operator: Operator) -> None:
    """Without a kubelet serving the node (no `kubelet_logs` yet), the API server cannot fetch the log: the
    error names the pod chosen. A replica no pod carries the label of has no writer pod."""
    cluster = operator.cluster
    (pod,) = inplace.running_pods(cluster, NAMESPACE, f"app={inplace.APP}")
    line = one_error_line(plugin("logs", REPLICA))
    assert f"cannot read the log of lifeboat-agent in pod {pod['metadata']['name']}:" in line
    assert "no writer pod: no running pod carries label lifeboat.dev/replica=lonely" in one_error_line(
        plugin("logs", LONELY))
    assert "--pod nope: no pod of that name" in one_error_line(plugin("logs", REPLICA, "--pod", "nope"))


def cri_line(text: str) -> str:
    """A line of a container log file as the kubelet's runtime writes it (CRI format)."""
    return f"2024-05-01T12:00:00.000000000Z stdout F {text}\n"


@pytest.fixture
def kubelet_logs(plugin: Plugin, operator: Operator, tmp_path: Path) -> Iterator[Path]:
    """kwok's kubelet server for the node, serving a file as the app pod's agent log.

    A second kwok process, managing no node, runs only its kubelet-like HTTPS server with a `Logs` rule for
    the pod; the node's status gets its address and port, so the API server fetches `pods/log` from it.
    """
    cluster = operator.cluster
    (pod,) = inplace.running_pods(cluster, NAMESPACE, f"app={inplace.APP}")
    log = tmp_path / "agent.log"
    log.write_text(cri_line("starting") + cri_line("replicating /data/app.db"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(tmp_path / "tls.key"), "-out", str(tmp_path / "tls.crt"), "-days", "1",
                    "-subj", "/CN=kwok-kubelet"], check=True, capture_output=True)
    never = [{"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": f"never-{kind}"},
              "spec": {"resourceRef": {"apiGroup": "v1", "kind": kind}, "next": {},
                       "selector": {"matchExpressions": [{"key": '.metadata.annotations["lifeboat.dev/never"]',
                                                          "operator": "Exists"}]}}}
             for kind in ("Node", "Pod")]  # kwok refuses to start without stages; these match nothing
    rules = {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Logs",
             "metadata": {"name": pod["metadata"]["name"], "namespace": NAMESPACE},
             "spec": {"logs": [{"containers": ["lifeboat-agent"], "logsFile": str(log)}]}}
    (tmp_path / "kwok.yaml").write_text(yaml.safe_dump_all([rules, *never]))
    address, port = host_address(), free_port()
    kwok = subprocess.Popen(
        [str(kwok_binary()), f"--kubeconfig={cluster.kubeconfig}", f"--config={tmp_path / 'kwok.yaml'}",
         "--manage-nodes-with-label-selector=lifeboat.dev/no-such-node=true", f"--server-address={address}:{port}",
         f"--tls-cert-file={tmp_path / 'tls.crt'}", f"--tls-private-key-file={tmp_path / 'tls.key'}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "kwok.log").open("w"), start_new_session=True)
    node = pod["spec"]["nodeName"]
    status = {"addresses": [{"type": "InternalIP", "address": address}],
              "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}
    try:
        cluster.kubectl("patch", "node", node, "--subresource=status", "--type=merge",
                        "-p", json.dumps({"status": status}))
        wait_until(lambda: cluster.kubectl("logs", "-n", NAMESPACE, pod["metadata"]["name"], "-c", "lifeboat-agent",
                                           check=False).returncode == 0, 60, "kwok serving the log")
        yield log
    finally:
        cluster.kubectl("patch", "node", node, "--subresource=status", "--type=merge",
                        "-p", json.dumps({"status": {"addresses": None, "daemonEndpoints": None}}))
        kwok.terminate()
        kwok.wait(timeout=30)


def kwok_binary() -> Path:
    """The kwok that `.ci/cluster.sh` built (the newest in its cache)."""
    cache = Path(os.environ.get("LIFEBOAT_K8S_CACHE", Path.home() / ".cache" / "lifeboat-k8s"))
    found = sorted(cache.glob("kwok-*/kwok"))
    assert found, f"no kwok under {cache}"
    return found[-1]


def test_logs_prints_and_follows_the_writer_pods_agent_log(plugin: Plugin, kubelet_logs: Path) -> None:
    printed = plugin("logs", REPLICA)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.splitlines() == ["starting", "replicating /data/app.db"]

    following = plugin.popen("logs", REPLICA, "-f")
    try:
        assert following.stdout is not None
        assert [following.stdout.readline() for _ in range(2)] == ["starting\n", "replicating /data/app.db\n"]
        with kubelet_logs.open("a") as log:
            log.write(cri_line("synced txid 00000000000000a3"))
        assert following.stdout.readline() == "synced txid 00000000000000a3\n"
    finally:
        following.terminate()
        following.wait(timeout=30)


def test_failures_are_one_readable_line(plugin: Plugin, operator: Operator, tmp_path: Path) -> None:
    cluster = operator.cluster
    assert "no SQLiteReplica 'nope' in namespace plugin" in one_error_line(plugin("status", "nope"))
    assert "no SQLiteReplica 'nope' in namespace other" in one_error_line(plugin("pause", "nope", "-n", "other"))

    config = yaml.safe_load(plugin.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    unreachable = Plugin(tmp_path / "unreachable")
    unreachable.kubeconfig.write_text(yaml.safe_dump(config))
    assert "cannot reach the API server at https://127.0.0.1:" in one_error_line(unreachable("status"))

    cluster.kubectl("create", "serviceaccount", "nobody", "-n", NAMESPACE)
    nobody = cluster.service_account_kubeconfig(NAMESPACE, "nobody", tmp_path / "nobody")
    line = one_error_line(Plugin(nobody)("status", "-n", NAMESPACE))
    assert line.startswith("kubectl-lifeboat: error: forbidden: ") and "nobody" in line
