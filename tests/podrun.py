"""The kubelet, as far as the tests need one: an injected pod's containers run as local processes.

Each container runs with exactly the command, args and env its pod spec gives it:

* env: `value`, `valueFrom.secretKeyRef` and `envFrom.secretRef` resolved against a dict standing for
  the Secrets (and nothing from the test's own environment: no ambient AWS credentials);
* volumes: every volume gets a local directory (a PVC a directory that outlives the pod, an emptyDir or
  a projected service-account token a fresh one, a ConfigMap a directory holding its keys), and every
  path under a container's mount is rewritten to that directory, in args, env and mounted files alike;
* network: a pod whose IP (status.podIP) is on loopback, as kwok assigns them here (.ci/cluster.sh),
  has its agent listen on that IP (the config's `addr` host), so several pods' agents share a port as
  in their own network namespaces, and the operator reaches each at its pod IP;
* order: init containers one after another, a native sidecar (`restartPolicy: Always`) started and
  its `startupProbe` awaited before the next, then the regular containers; on termination the app is
  SIGKILLed and the sidecar gets SIGTERM, its final sync.

Only Lifeboat's own containers (command ``lifeboat``) are run; the app container is the test's own
writer process.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from helpers import LIFEBOAT, wait_for


@dataclass
class Container:
    """One container of the pod, mapped onto this machine."""

    name: str
    argv: list[str]  # Lifeboat's own containers only; empty for the app's
    env: dict[str, str]
    mounts: dict[str, Path]  # mountPath in the container → local directory
    args: list[str]  # the spec's args, paths rewritten

    def local(self, path: str) -> Path:
        """Where a path the container sees lives here (the longest mount prefix wins)."""
        best = max((m for m in self.mounts if path == m or path.startswith(m.rstrip("/") + "/")), key=len)
        return self.mounts[best] / posixpath.relpath(path, best)


def _rewrite(value: Any, mounts: Mapping[str, Path]) -> Any:
    """Every string naming a path under a mount, rewritten to the local directory (recursively)."""
    if isinstance(value, dict):
        return {k: _rewrite(v, mounts) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, mounts) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        for mount in sorted(mounts, key=len, reverse=True):
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                return str(mounts[mount] / posixpath.relpath(value, mount))
    return value


def _env(container: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str]], home: Path) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    for source in container.get("envFrom") or []:
        ref = source["secretRef"]  # the only kind injection emits
        env.update({source.get("prefix", "") + k: v for k, v in secrets[ref["name"]].items()})
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def _is_ours(container: Mapping[str, Any]) -> bool:
    return container.get("command") == ["lifeboat"]


@dataclass
class Pod:
    """A scheduled copy of the injected pod: its volumes as local directories."""

    manifest: dict[str, Any]
    root: Path
    claims: Mapping[str, Path]  # PVC claimName → local directory (the disk outlives the pod)
    configmaps: Mapping[str, Mapping[str, str]]
    secrets: Mapping[str, Mapping[str, str]]
    volumes: dict[str, Path] = field(default_factory=dict)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for volume in self.manifest["spec"].get("volumes") or []:
            name = volume["name"]
            if "persistentVolumeClaim" in volume:
                self.volumes[name] = self.claims[volume["persistentVolumeClaim"]["claimName"]]
            elif "emptyDir" in volume:
                self.volumes[name] = self.root / "emptydir" / name
                self.volumes[name].mkdir(parents=True)
            elif "configMap" in volume:
                self.volumes[name] = self.root / "configmap" / name  # filled per container (paths rewritten)
            elif "projected" in volume:  # the service-account token the API server adds: not used
                self.volumes[name] = self.root / "projected" / name
                self.volumes[name].mkdir(parents=True)
            else:
                raise AssertionError(f"volume kind the test does not emulate: {volume}")

    @property
    def ip(self) -> str:
        """Where this pod's processes listen: its pod IP when on loopback, else 127.0.0.1."""
        ip = (self.manifest.get("status") or {}).get("podIP")
        return ip if ip and ipaddress.ip_address(ip).is_loopback else "127.0.0.1"

    def _config(self, text: str, mounts: Mapping[str, Path]) -> str:
        config = _rewrite(yaml.safe_load(text), mounts)
        if isinstance(config, dict) and str(config.get("addr", "")).startswith(":"):
            config["addr"] = f"{self.ip}{config['addr']}"  # ":9090": every address of the pod's own network
        return yaml.safe_dump(config)

    def _container(self, spec: Mapping[str, Any]) -> Container:
        mounts: dict[str, Path] = {}
        cm_volumes = {v["name"]: v["configMap"]["name"] for v in self.manifest["spec"]["volumes"] if "configMap" in v}
        for mount in spec.get("volumeMounts") or []:
            local = self.volumes[mount["name"]] / mount.get("subPath", "")
            mounts[mount["mountPath"]] = local
        for mount in spec.get("volumeMounts") or []:
            if mount["name"] in cm_volumes:  # each container sees the ConfigMap's keys as files
                local = self.root / "configmap" / spec["name"] / mount["name"]
                local.mkdir(parents=True)
                mounts[mount["mountPath"]] = local
                for key, text in self.configmaps[cm_volumes[mount["name"]]].items():
                    (local / key).write_text(self._config(text, mounts))
        args = _rewrite(list(spec.get("args") or []), mounts)
        argv = [*LIFEBOAT, *args] if _is_ours(spec) else []  # the app is the test's own writer process
        env = _rewrite(_env(spec, self.secrets, self.root), mounts)
        if "/tmp" in mounts:
            env["TMPDIR"] = str(mounts["/tmp"])
        return Container(spec["name"], argv, env, mounts, args)

    def container(self, name: str) -> Container:
        for spec in self.manifest["spec"].get("initContainers", []) + self.manifest["spec"]["containers"]:
            if spec["name"] == name:
                return self._container(spec)
        raise AssertionError(f"no container {name}")

    def start_init(self) -> dict[str, subprocess.CompletedProcess[str]]:
        """Run the init containers in order, as the kubelet does; a native sidecar keeps running."""
        done: dict[str, subprocess.CompletedProcess[str]] = {}
        for spec in self.manifest["spec"].get("initContainers", []):
            c = self._container(spec)
            if spec.get("restartPolicy") == "Always":
                self._start_sidecar(c, spec)
                continue
            proc = subprocess.run(c.argv, env=c.env, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, f"init container {c.name} exited {proc.returncode}: {proc.stderr}"
            done[c.name] = proc
        return done

    def start_containers(self) -> None:
        """The regular containers: ours (the agent, without native sidecars) start beside the app's."""
        for spec in self.manifest["spec"]["containers"]:
            if _is_ours(spec):
                self._start_sidecar(self._container(spec), spec)

    def _start_sidecar(self, c: Container, spec: Mapping[str, Any]) -> None:
        log = open(self.root / f"{c.name}.log", "w")  # the child keeps its own copy
        proc = subprocess.Popen(c.argv, env=c.env, stdout=log, stderr=subprocess.STDOUT, text=True)
        log.close()
        self.procs.append(proc)
        probe = spec["startupProbe"]
        port = {p["name"]: p["containerPort"] for p in spec["ports"]}[probe["httpGet"]["port"]]
        url = f"http://{self.ip}:{port}{probe['httpGet']['path']}"

        def started() -> bool:
            assert proc.poll() is None, f"{c.name} exited {proc.returncode}: {self.log(c.name)}"
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_for(started, probe["periodSeconds"] * probe["failureThreshold"], what=f"{c.name} startupProbe")

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def terminate(self, app: subprocess.Popen[str] | None) -> int:
        """The pod goes: the app is killed outright, then the sidecar gets SIGTERM (its final sync)."""
        if app is not None and app.poll() is None:
            app.send_signal(signal.SIGKILL)
            app.wait()
        (agent,) = self.procs
        agent.send_signal(signal.SIGTERM)
        try:
            return agent.wait(timeout=60)
        finally:
            if agent.poll() is None:
                agent.kill()

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
