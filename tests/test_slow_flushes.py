"""The slow-flush probe times every flush of a paced run by stage, and unpatches the router."""

from __future__ import annotations

from benchmarks.slow_flushes import STAGES, record, stage_means


def test_every_flush_is_timed_and_the_router_is_left_as_it_was() -> None:
    before = {name: vars(owner)[attr] for name, (owner, attr) in STAGES.items()}
    flushes = record(rate=20_000.0, ticks=2_000, symbols=5, config=None)
    assert sum(f.messages for f in flushes) == 2_000
    assert flushes[0].at == 0.0
    assert all(f.wall_ms > 0 and f.cpu_ms > 0 for f in flushes)
    # Every flush groups its messages; the steady step takes the symbols once their sessions
    # have begun.
    assert all(f.stages.get("group", 0) > 0 for f in flushes)
    assert any(f.stages.get("steady", 0) > 0 for f in flushes)
    assert all(f.stages.get("finish", 0) > 0 for f in flushes)
    assert {name: vars(owner)[attr] for name, (owner, attr) in STAGES.items()} == before
    means = stage_means(flushes)
    assert set(means) == set(STAGES)
    group = sum(f.stages.get("group", 0.0) for f in flushes) / len(flushes)
    assert means["group"] == group > 0
