"""The JSON patch (RFC 6902) that turns one JSON document into another: what a mutating webhook answers. Pure.

Made for what the webhook does to a pod, which is to add: objects are compared key by key and entered
only where they differ (an equal subtree costs one comparison); a list that gained a contiguous run of
items gets one ``add`` per item, so the app's own containers and volumes are never rewritten. Any other
change to a list replaces it whole, which is always correct, only longer.
"""

from typing import Any

JSONPatch = list[dict[str, Any]]


def diff(before: Any, after: Any) -> JSONPatch:
    """The operations that turn ``before`` into ``after`` (both plain JSON values)."""
    ops: JSONPatch = []
    _diff(before, after, "", ops)
    return ops


def _diff(before: Any, after: Any, path: str, ops: JSONPatch) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        for key, value in after.items():
            where = f"{path}/{escape(key)}"
            if key not in before:
                ops.append({"op": "add", "path": where, "value": value})
            elif not _same(before[key], value):
                _diff(before[key], value, where, ops)
        ops.extend({"op": "remove", "path": f"{path}/{escape(key)}"} for key in before if key not in after)
        return
    if isinstance(before, list) and isinstance(after, list):
        inserted = _insertion(before, after)
        if inserted is not None:
            start, count = inserted
            ops.extend({"op": "add", "path": f"{path}/{start + i}", "value": after[start + i]} for i in range(count))
            return
    ops.append({"op": "replace", "path": path, "value": after})


def _same(a: Any, b: Any) -> bool:
    # 1 == 1.0 == True in Python, not in JSON. (Within equal-looking subtrees Python's equality decides:
    # the webhook changes no value's type.)
    return type(a) is type(b) and a == b


def _insertion(before: list[Any], after: list[Any]) -> tuple[int, int] | None:
    """(index, count) when ``after`` is ``before`` with ``count`` items inserted at ``index``; else None."""
    count = len(after) - len(before)
    if count <= 0:
        return None
    start = 0
    while start < len(before) and _same(before[start], after[start]):
        start += 1
    if not all(_same(a, b) for a, b in zip(before[start:], after[start + count:], strict=True)):
        return None
    return start, count


def escape(key: str) -> str:
    """A key as one JSON-pointer reference token (RFC 6901): ``~`` and ``/`` escaped."""
    return key.replace("~", "~0").replace("/", "~1")
