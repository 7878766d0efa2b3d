"""Where the injected containers go in a service-mesh pod, and the annotations that keep the agent's port
out of the mesh's traffic interception. Pure.

Istio and Linkerd put their own init containers (iptables setup, or a CNI validator) and, in
native-sidecar mode, their proxy (an init container with ``restartPolicy: Always``) into
``initContainers``. Placed after them, the restore runs once the proxy carries traffic, and the agent,
a later native sidecar, is stopped *before* the proxy, so its final sync still reaches the replica.

Without a native-sidecar proxy (the proxy is a regular container, started after every init container)
the injected containers stay in front: a restore that runs before the mesh's iptables setup reaches
the network directly, one that runs after it would be redirected to a proxy not yet started.
"""

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

# The meshes' proxies, and their init containers, by the names their injectors give them.
MESH_PROXIES = frozenset({"istio-proxy", "linkerd-proxy"})
MESH_INIT_CONTAINERS = MESH_PROXIES | {"istio-init", "istio-validation", "linkerd-init", "linkerd-network-validator"}
# Inbound ports each mesh leaves alone: the kubelet's probes and Prometheus reach the agent directly.
EXCLUDE_INBOUND_ANNOTATIONS = (
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "config.linkerd.io/skip-inbound-ports",
)


def insertion_index(init_containers: Sequence[Mapping[str, Any]]) -> int:
    """The index in ``initContainers`` just after the last mesh container when the mesh's proxy is a
    native sidecar there; else 0."""
    if not any(c.get("name") in MESH_PROXIES and c.get("restartPolicy") == "Always" for c in init_containers):
        return 0
    mesh = [i for i, c in enumerate(init_containers) if c.get("name") in MESH_INIT_CONTAINERS]
    return mesh[-1] + 1


def exclude_inbound_port(annotations: MutableMapping[str, str], port: int) -> None:
    """Add ``port`` to both meshes' inbound exclusion lists, keeping the values already there.

    Set whether or not a mesh is visible yet: its injector may run after this webhook.
    """
    for key in EXCLUDE_INBOUND_ANNOTATIONS:
        current = [part.strip() for part in annotations.get(key, "").split(",") if part.strip()]
        if str(port) not in current:
            annotations[key] = ",".join([*current, str(port)])
