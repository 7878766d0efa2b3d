"""Where the injected containers go in a service-mesh pod, and the annotations that keep the agent's port
out of the mesh's traffic interception. Pure.

Istio and Linkerd put their own init containers (iptables setup, or a CNI validator) and, in
native-sidecar mode, their proxy (an init container with ``restartPolicy: Always``) into
``initContainers``. Placed after them, the restore runs once the proxy carries traffic, and the agent,
a later native sidecar, is stopped *before* the proxy, so its final sync still reaches the replica.
"""

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

# Init containers (and native-sidecar proxies) of the meshes, by the names their injectors give them.
MESH_INIT_CONTAINERS = frozenset({
    "istio-init", "istio-validation", "istio-proxy",
    "linkerd-init", "linkerd-network-validator", "linkerd-proxy",
})
# Inbound ports each mesh leaves alone: the kubelet's probes and Prometheus reach the agent directly.
EXCLUDE_INBOUND_ANNOTATIONS = (
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "config.linkerd.io/skip-inbound-ports",
)


def insertion_index(init_containers: Sequence[Mapping[str, Any]]) -> int:
    """The index in ``initContainers`` just after the last mesh container (0 without a mesh)."""
    mesh = [i for i, c in enumerate(init_containers) if c.get("name") in MESH_INIT_CONTAINERS]
    return mesh[-1] + 1 if mesh else 0


def exclude_inbound_port(annotations: MutableMapping[str, str], port: int) -> None:
    """Add ``port`` to both meshes' inbound exclusion lists, keeping the values already there.

    Set whether or not a mesh is visible yet: its injector may run after this webhook.
    """
    for key in EXCLUDE_INBOUND_ANNOTATIONS:
        current = [part.strip() for part in annotations.get(key, "").split(",") if part.strip()]
        if str(port) not in current:
            annotations[key] = ",".join([*current, str(port)])
