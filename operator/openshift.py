"""OpenShift's per-namespace uid range: the injected containers must run as a uid inside it.

OpenShift's restricted SecurityContextConstraints admit only uids from the range its namespace carries in
``openshift.io/sa.scc.uid-range`` (``<first>/<size>``, or ``<first>-<last>``). The image's own uid, which
injection falls back to when neither the app nor the pod names one, is outside every such range.
"""

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

from lifeboat.operator import injection

UID_RANGE_ANNOTATION = "openshift.io/sa.scc.uid-range"
_RANGE = re.compile(r"\s*(\d+)\s*[/-]\s*\d+\s*")


def first_uid(namespace: Mapping[str, Any] | None) -> int | None:
    """The first uid of the namespace's range, or None when it has none (not OpenShift) or it is unreadable."""
    annotations = ((namespace or {}).get("metadata") or {}).get("annotations") or {}
    found = _RANGE.fullmatch(annotations.get(UID_RANGE_ANNOTATION) or "")
    return int(found.group(1)) if found else None


def follow_uid_range(pod: MutableMapping[str, Any], uid: int) -> None:
    """Run the injected containers as ``uid`` where injection fell back to the image's uid."""
    spec = pod.get("spec") or {}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if container.get("name") in (injection.RESTORE_CONTAINER, injection.AGENT_CONTAINER):
            context = container.get("securityContext") or {}
            if context.get("runAsUser") == injection.DEFAULT_UID:
                context["runAsUser"] = uid
