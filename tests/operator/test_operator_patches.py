"""``patches.diff``: the JSON patch the webhook answers, built without a generic diff of a copied pod."""

import copy
from typing import Any

import jsonpatch
import pytest
from kube_helpers import make_pod, make_replica
from lifeboat.operator import injection, patches

ISTIO_NATIVE = [{"name": "istio-init", "image": "proxyv2"},
                {"name": "istio-proxy", "image": "proxyv2", "restartPolicy": "Always"}]


@pytest.mark.parametrize(("pod", "replica", "options"), [
    (make_pod(), make_replica(), {}),
    (make_pod(), make_replica(), {"native_sidecar": False}),
    (make_pod(), make_replica(), {"follower": True}),
    (make_pod(initContainers=[{"name": "migrate", "image": "app:1"}]), make_replica(), {}),
    (make_pod(initContainers=ISTIO_NATIVE), make_replica(), {}),
    (make_pod(), make_replica(replica={"url": "gs://bucket/db", "credentials": {"secretName": "gcs"}}), {}),
    ({**make_pod(), "metadata": {"generateName": "app-", "labels": {"lifeboat.dev/replica": "db"},
                                 "annotations": {"prometheus.io/port": "9000", "a/b~c": "x",
                                                 "traffic.sidecar.istio.io/excludeInboundPorts": "15020"}}},
     make_replica(), {}),
], ids=["native", "regular-container", "follower", "user-init", "istio-native", "gcs", "own-annotations"])
def test_the_patch_yields_the_injected_pod_and_only_adds(
    pod: dict[str, Any], replica: dict[str, Any], options: dict[str, Any]
) -> None:
    original = copy.deepcopy(pod)
    injected = injection.inject(pod, replica, **options)

    ops = patches.diff(pod, injected)

    assert jsonpatch.JsonPatch(ops).apply(pod) == injected
    assert pod == original
    # The patch adds beside what the pod has: the app's containers and volumes stay as sent; only a mesh
    # annotation the pod sets already is replaced (with our port appended).
    assert all(op["op"] == "add" or op["path"].startswith("/metadata/annotations/") for op in ops), ops
    assert not any(op["path"].startswith(("/spec/containers/0", "/spec/volumes/0")) for op in ops)


def test_an_injected_pod_needs_no_patch() -> None:
    injected = injection.inject(make_pod(), make_replica())

    assert patches.diff(injected, injection.inject(injected, make_replica())) == []


@pytest.mark.parametrize(("before", "after"), [
    ({"a": [1, 2, 3]}, {"a": [3, 2, 1]}),  # reordered: replaced
    ({"a": [1, 2, 3]}, {"a": [1, 3]}),  # shortened
    ({"a": [1, 2]}, {"a": [0, 1, 9, 2]}),  # two runs inserted
    ({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}}),  # a key removed
    ({"a": 1}, {"a": True}),  # equal in Python, not in JSON
    ({"a": 1}, {"a": "1"}),
    ({"a": {"x/y": 1, "m~n": 1}}, {"a": {"x/y": 2, "m~n": 2}}),  # keys escaped
    ([1], {"a": 1}),  # the whole document
])
def test_any_other_change_still_yields_the_target(before: Any, after: Any) -> None:
    assert jsonpatch.JsonPatch(patches.diff(before, after)).apply(copy.deepcopy(before)) == after
