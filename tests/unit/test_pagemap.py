"""`PageMap`: the WAL scan's page -> offset map behaves as a dict, small or large, in bounded memory."""

from __future__ import annotations

import random
import tracemalloc

from lifeboat.agent.pagemap import DENSE_AFTER, PageMap


def test_behaves_as_a_dict_across_the_switch_to_dense() -> None:
    rng = random.Random(7)
    model: dict[int, int] = {}
    pm = PageMap()
    for i in range(DENSE_AFTER * 2):
        pgno = rng.randint(1, DENSE_AFTER * 3)
        off = 32 + 24 + i * 4120
        pm.set(pgno, off)
        model[pgno] = off
        if i in (10, DENSE_AFTER - 1, DENSE_AFTER + 1, DENSE_AFTER * 2 - 1):
            assert len(pm) == len(model)
            assert list(pm.items()) == sorted(model.items())
            assert list(pm.pgnos()) == sorted(model)
    assert all(pm.get(p) == model.get(p) for p in range(0, DENSE_AFTER * 3 + 5))


def test_update_keeps_the_newer_frame_and_empties_nothing_it_should_not() -> None:
    latest, pending = PageMap(), PageMap()
    latest.update(pending)  # empty into empty
    pending.set(5, 100)
    latest.update(pending)
    pending.clear()
    assert list(latest.items()) == [(5, 100)] and len(pending) == 0
    pending.set(5, 200)
    pending.set(9, 300)
    latest.update(pending)
    assert list(latest.items()) == [(5, 200), (9, 300)]


def test_a_transaction_of_a_million_pages_costs_bytes_a_page_not_a_dict_entry() -> None:
    pages = 1_000_000
    tracemalloc.start()
    try:
        pm = PageMap()
        for pgno in range(1, pages + 1):
            pm.set(pgno, pgno * 4120)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(pm) == pages
    # A dict of a million ints is ~100 MB; the dense array is 8 MB (plus the growth slack and the
    # small dict it started as).
    assert peak < 24 * 1024 * 1024, peak
