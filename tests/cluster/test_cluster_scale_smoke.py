"""The scale benchmark's code, run small: every pod injected and admitted, every SQLiteReplica reconciled.

`bench/scale_operator.py` measures the operator with thousands of pods; this runs the same code with
a few hundred and asserts only what must hold at any size, never a time. The session's operator is
stopped meanwhile: the benchmark starts its own, and a second one would share the webhook Service
and the leadership with it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from k8s import REPO, Operator

sys.path.insert(0, str(REPO / "bench"))
import scale_operator

PODS, REPLICAS, NAMESPACES = 200, 20, 4


@pytest.fixture
def alone(operator: Operator) -> Iterator[None]:
    """The session's operator stopped (and out of its Service) while the benchmark runs its own."""
    operator.stop()
    operator.unroute()
    try:
        yield
    finally:
        operator.start()


# Waits, not an assertion on time: a few hundred pods through the control plane, a quiet minute and a
# restart take longer than the suite's default per-test limit on two busy cores.
@pytest.mark.timeout(1200)
def test_scale_smoke(alone: None) -> None:
    result = scale_operator.run(pods=PODS, replicas=REPLICAS, namespaces=NAMESPACES, curve=[PODS])
    correctness = result["correctness"]
    assert correctness["pods_running"] == PODS
    assert correctness["pods_injected"] == PODS
    assert correctness["replicas_reconciled"] is True
    assert correctness["refusals"] == []
    assert correctness["direct_refusals"] == 0
    (point,) = result["curve"]
    assert point["settled"] is True
    assert point["admission"]["admissions"] == scale_operator.ADMISSIONS
    assert point["admission"]["alike"]["admissions"] == scale_operator.ADMISSIONS
    assert point["gc_pauses"]["0"]["count"] > 0  # the operator's own /metrics times its collections
    assert point["apiserver_admission"]["admissions"] >= PODS  # every pod went through the webhook
    assert "Operator at scale" in scale_operator.markdown(result)
