"""``lifeboat-operator`` runs on uvloop when it is installed (``kopf.run()`` alone would not pick it)."""

import asyncio
import os
import pathlib
import sys

import kmock

# uvloop is in the operator extra the image installs: missing here is a broken install, not a reason to skip.
import uvloop  # noqa: F401
import yaml
from conftest import kmock_resource_info
from kube_helpers import NAMESPACE, REPO, create, free_port
from lifeboat.operator import webhook


async def test_the_entry_point_serves_the_webhook_on_uvloop(
    k8s: kmock.KubernetesEmulator, kubeconfig: None, tls: webhook.TLSBundle, tmp_path: pathlib.Path
) -> None:
    # The peering object the chart creates: without it the operator refuses to start.
    (crd,) = [c for c in yaml.safe_load_all((REPO / "crds" / "kopfpeerings.yaml").read_text())
              if c["spec"]["scope"] == "Namespaced"]
    k8s.resources["kopf.dev/v1/kopfpeerings"] = kmock_resource_info({**crd, "spec": {
        **crd["spec"], "names": {"shortNames": [], "categories": [], **crd["spec"]["names"]}}})
    await create(k8s, f"/apis/kopf.dev/v1/namespaces/{NAMESPACE}/kopfpeerings",
                 {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                  "metadata": {"name": "lifeboat", "namespace": NAMESPACE}})
    port = free_port()
    # The real entry point in its own process, as the Deployment runs it; KUBECONFIG points at kmock.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-m", "lifeboat.operator.main", "--namespace", NAMESPACE,
        "--webhook-addr", "127.0.0.1", f"--webhook-port={port}", f"--tls-dir={tmp_path / 'tls'}",
        "--metrics-port=0", f"--liveness-port={free_port()}",
        cwd=REPO, env={**os.environ}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    output = bytearray()

    async def read() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            output.extend(chunk)

    reader = asyncio.create_task(read())
    try:
        async with asyncio.timeout(30):
            while True:  # until the operator serves: its webhook's port opens
                assert proc.returncode is None, f"the operator exited:\n{output.decode()}"
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.1)
                    continue
                writer.close()
                break
    finally:
        proc.terminate()
        await proc.wait()
        await reader
    assert "Running on the uvloop event loop." in output.decode(), output.decode()
