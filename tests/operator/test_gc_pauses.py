"""The operator's /metrics shows how long garbage collections held it, by generation."""

import gc

from lifeboat.operator import metrics


def collected(generation: int) -> float:
    return metrics.REGISTRY.get_sample_value("lifeboat_operator_gc_pause_seconds_count",
                                             {"generation": str(generation)}) or 0.0


def test_every_collection_is_timed_by_generation_and_installed_once() -> None:
    metrics.time_gc_pauses()
    metrics.time_gc_pauses()
    before = [collected(g) for g in range(3)]

    gc.collect(2)
    gc.collect(0)

    assert sum(isinstance(c, metrics.GCPauses) for c in gc.callbacks) == 1
    assert collected(2) == before[2] + 1
    assert collected(0) >= before[0] + 1  # and any the interpreter ran meanwhile
