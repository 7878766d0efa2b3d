"""The operator's own Prometheus metrics, served on their own port (not the agents' ones)."""

import functools
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

INJECTIONS = Counter("lifeboat_operator_injections_total", "Pods the webhook injected",
                     ["namespace", "replica"], registry=REGISTRY)
DENIALS = Counter("lifeboat_operator_denials_total", "Pods the webhook refused", ["namespace"], registry=REGISTRY)
# From the parsed review to the answer: not the TLS, the HTTP parsing, nor the wait for the event loop,
# which the API server's apiserver_admission_webhook_admission_duration_seconds includes.
ADMISSION_SECONDS = Histogram("lifeboat_operator_admission_seconds", "Time the webhook took to judge a pod",
                              buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                              registry=REGISTRY)
RECONCILE_ERRORS = Counter("lifeboat_operator_reconcile_errors_total", "Handler runs that raised",
                           ["handler"], registry=REGISTRY)
RESTORES = Counter("lifeboat_operator_restores_total", "SQLiteRestores entering each phase",
                   ["phase"], registry=REGISTRY)
UNINJECTED_PODS = Gauge("lifeboat_operator_uninjected_pods",
                        "Pods labelled for a SQLiteReplica that run no agent", ["namespace", "replica"],
                        registry=REGISTRY)
SINGLE_WRITER_VIOLATIONS = Gauge("lifeboat_operator_single_writer_violations",
                                 "1 when a SQLiteReplica's workload allows more than one writer",
                                 ["namespace", "replica"], registry=REGISTRY)
# Restore verification (lifeboat.operator.verify), per SQLiteReplica.
VERIFIED = Gauge("lifeboat_restore_verified_timestamp_seconds",
                 "When a verification restore of the replica last succeeded (Unix time)", ["namespace", "replica"],
                 registry=REGISTRY)
VERIFICATION_FAILURES = Counter("lifeboat_restore_verification_failures_total",
                                "Verification restores that failed (restore error, integrity, TXID behind)",
                                ["namespace", "replica"], registry=REGISTRY)
VERIFY_INTERVAL = Gauge("lifeboat_restore_verification_interval_seconds",
                        "The longest time between two runs of the replica's spec.verify.schedule",
                        ["namespace", "replica"], registry=REGISTRY)
VERIFY_SINCE = Gauge("lifeboat_restore_verification_since_timestamp_seconds",
                     "When the operator first saw the replica's spec.verify (Unix time): the alert's start "
                     "before any verification succeeded", ["namespace", "replica"], registry=REGISTRY)

# The cyclic garbage collector stops the whole process, the webhook included: with the indexes of
# thousands of pods in memory, a full collection is long enough to show in the admissions' tail.
GC_PAUSE_SECONDS = Histogram("lifeboat_operator_gc_pause_seconds",
                             "Time each cyclic garbage collection held the operator, by generation",
                             ["generation"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
                             registry=REGISTRY)

P = ParamSpec("P")
R = TypeVar("R")


def counted(handler: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Count a kopf handler's exceptions (kopf retries them) as reconcile errors."""
    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except Exception:
                RECONCILE_ERRORS.labels(handler).inc()
                raise
        return wrapper
    return decorate


class GCPauses:
    """A ``gc.callbacks`` entry observing each collection's pause in ``GC_PAUSE_SECONDS``."""

    def __init__(self) -> None:
        self._started = 0.0
        self._generations = [GC_PAUSE_SECONDS.labels(str(generation)) for generation in range(3)]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._generations[info["generation"]].observe(time.perf_counter() - self._started)


def time_gc_pauses() -> None:
    """Observe every garbage collection's pause from now on (once per process)."""
    if not any(isinstance(callback, GCPauses) for callback in gc.callbacks):
        gc.callbacks.append(GCPauses())


def serve(port: int, addr: str = "0.0.0.0") -> Any:
    """Start the /metrics HTTP server in a thread; returns the server (``shutdown()`` stops it)."""
    server, _thread = prometheus_client.start_http_server(port, addr=addr, registry=REGISTRY)
    return server
