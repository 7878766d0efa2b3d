"""``lifeboat-operator-uninstall``: after ``helm uninstall``, release every SQLiteReplica and SQLiteRestore
from kopf's finalizer (the chart's post-delete hook).

kopf's timers need that finalizer (it stops them before an object goes; kopf offers no way around it),
and only a running operator removes it. Once the operator is gone, a finalizer nobody removes keeps the
objects, and their namespaces, in ``Terminating`` forever. This waits until the operator's pods are
gone (else they would put the finalizer back), then removes it.
"""

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import kubernetes
from kubernetes.client import ApiException
from lifeboat.operator import kube, restores
from lifeboat.operator import spec as specs

# What kopf writes (handlers.configure sets it as settings.persistence.finalizer).
FINALIZER = f"{specs.GROUP}/finalizer"
PLURALS = (specs.PLURAL, restores.PLURAL)


def _objects(api: kubernetes.client.CustomObjectsApi, plural: str,
             namespaces: Sequence[str]) -> Iterator[dict[str, Any]]:
    if not namespaces:
        yield from api.list_cluster_custom_object(specs.GROUP, specs.VERSION, plural)["items"]
    for namespace in namespaces:
        yield from api.list_namespaced_custom_object(specs.GROUP, specs.VERSION, namespace, plural)["items"]


def release(api: kubernetes.client.CustomObjectsApi, namespaces: Sequence[str]) -> int:
    """Remove the finalizer from every object that carries it; how many were released."""
    released = 0
    for plural in PLURALS:
        for obj in _objects(api, plural, namespaces):
            metadata = obj["metadata"]
            finalizers = metadata.get("finalizers") or []
            if FINALIZER not in finalizers:
                continue
            # The precondition keeps any other finalizer someone added meanwhile (a conflict fails loudly).
            patch = {"metadata": {"resourceVersion": metadata["resourceVersion"],
                                  "finalizers": [f for f in finalizers if f != FINALIZER]}}
            try:
                api.patch_namespaced_custom_object(specs.GROUP, specs.VERSION, metadata["namespace"], plural,
                                                   metadata["name"], patch)
            except ApiException as exc:
                if exc.status != 404:  # gone meanwhile is fine
                    raise
            released += 1
            print(f"released {plural}/{metadata['namespace']}/{metadata['name']}")
    return released


def wait_for_operator_gone(core: kubernetes.client.CoreV1Api, namespace: str, selector: str,
                           timeout: float) -> None:
    """Until no operator pod is left (they may still be terminating when the hook starts)."""
    deadline = time.monotonic() + timeout
    while core.list_namespaced_pod(namespace, label_selector=selector).items:
        if time.monotonic() > deadline:
            raise SystemExit(f"operator pods ({selector}) still in namespace {namespace} after {timeout:.0f} s")
        time.sleep(2)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``lifeboat-operator-uninstall``."""
    parser = argparse.ArgumentParser(prog="lifeboat-operator-uninstall", description=__doc__.split("\n\n")[0])
    parser.add_argument("--operator-namespace", required=True)
    parser.add_argument("--operator-selector", required=True, help="label selector of the operator's pods")
    parser.add_argument("--namespace", "-n", action="append", default=[], dest="namespaces",
                        help="release objects in this namespace only (repeatable); default: all namespaces")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the operator's pods")
    args = parser.parse_args(argv)
    client = kube.load_api_client()
    wait_for_operator_gone(kubernetes.client.CoreV1Api(client), args.operator_namespace, args.operator_selector,
                           args.timeout)
    released = release(kubernetes.client.CustomObjectsApi(client), args.namespaces)
    print(f"released {released} object(s) from {FINALIZER}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
