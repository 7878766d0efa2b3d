"""Connecting as kubectl does, and saying in one line why an API call failed.

Kubeconfig: ``--kubeconfig``, else ``$KUBECONFIG`` (a list of files, merged), else ``~/.kube/config``;
``--context`` or the current context; the namespace from ``-n``, else the context's, else ``default``.
Without any kubeconfig file the in-cluster ServiceAccount is used, as kubectl does in a pod.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class PluginError(Exception):
    """A failure the plugin reports as one line (its text) and a non-zero exit."""


@dataclass(frozen=True)
class Connection:
    """An API client and the namespace the command acts in."""

    api: client.ApiClient
    namespace: str

    @property
    def server(self) -> str:
        return str(self.api.configuration.host)


def _kubeconfig_files(explicit: str | None) -> list[str]:
    if explicit:
        return [explicit]
    listed = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    if listed:
        return listed
    default = Path("~/.kube/config").expanduser()
    return [str(default)] if default.exists() else []


def _first_current_context(files: list[str]) -> str | None:
    """The current-context of the first kubeconfig file that sets one (kubectl's merge rule)."""
    for name in files:
        path = Path(name).expanduser()
        if path.exists():
            loaded = yaml.safe_load(path.read_text())
            current = loaded.get("current-context") if isinstance(loaded, dict) else None
            if current:
                return str(current)
    return None


def connect(kubeconfig: str | None, context: str | None, namespace: str | None) -> Connection:
    """The connection the flags and environment select; :class:`PluginError` if there is none."""
    configuration = client.Configuration()
    files = _kubeconfig_files(kubeconfig)
    try:
        if files:
            if kubeconfig and not Path(kubeconfig).exists():
                raise PluginError(f"--kubeconfig {kubeconfig}: no such file")
            # One path as a string, several joined: the client merges their entries as kubectl does,
            # but takes the last file's current-context where kubectl takes the first one's.
            config_file = os.pathsep.join(files)
            context = context or _first_current_context(files)
            config.load_kube_config(config_file=config_file, context=context,
                                    client_configuration=configuration)
            contexts, active = config.list_kube_config_contexts(config_file=config_file)
            chosen = next((c for c in contexts if c["name"] == context), None) if context else active
            found = ((chosen or {}).get("context") or {}).get("namespace")
        else:
            if context:
                raise PluginError(f"--context {context}: no kubeconfig file ($KUBECONFIG, ~/.kube/config)")
            config.load_incluster_config(client_configuration=configuration)
            found = IN_CLUSTER_NAMESPACE.read_text().strip() if IN_CLUSTER_NAMESPACE.exists() else None
    except (ConfigException, yaml.YAMLError, OSError) as exc:
        where = f"kubeconfig {', '.join(files)}" if files else "no kubeconfig ($KUBECONFIG, ~/.kube/config) " \
            "and no in-cluster ServiceAccount"
        raise PluginError(f"{where}: {exc}".replace("\n", " ")) from None
    # A refused connection is reported at once, not after urllib3's three retries.
    configuration.retries = 1
    return Connection(client.ApiClient(configuration), namespace or found or "default")


def api_message(exc: ApiException) -> str:
    """The API server's own message (a Status object's), else the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(exc.reason or f"HTTP {exc.status}")


def describe(exc: Exception, server: str) -> str:
    """One line on why a call to the API server failed."""
    if isinstance(exc, ApiException):
        if exc.status == 401:
            return f"unauthorized by the API server at {server}: the kubeconfig's credentials were refused"
        if exc.status == 403:
            return f"forbidden: {api_message(exc)}"
        if exc.status == 0 or exc.status is None:
            return f"cannot reach the API server at {server}: {exc.reason}"
        return f"{api_message(exc)} (HTTP {exc.status})"
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        reason = exc.reason
        detail = str(reason).split(": ", 1)[-1] if reason else str(exc)
        return f"cannot reach the API server at {server}: {detail}"
    return f"cannot reach the API server at {server}: {type(exc).__name__}: {exc}"
