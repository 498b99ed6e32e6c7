"""The latency probe reports the paced run and times the collections made during it."""

from __future__ import annotations

import gc

from benchmarks.latency_probe import CollectorPauses, probe


def test_collections_are_timed_only_while_armed() -> None:
    pauses = CollectorPauses()
    gc.callbacks.append(pauses)
    try:
        gc.collect(2)
        assert pauses.counts == {}
        pauses.armed = True
        gc.collect(2)
        gc.collect(0)
    finally:
        gc.callbacks.remove(pauses)
    assert pauses.counts == {2: 1, 0: 1}
    assert pauses.longest[2] > 0


def test_a_paced_run_reports_percentiles_and_leaves_no_callback() -> None:
    callbacks = list(gc.callbacks)
    result, _ = probe(rate=20_000.0, ticks=2_000, symbols=5, config=None)
    assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms
    assert gc.callbacks == callbacks
