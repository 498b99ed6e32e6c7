"""The symbol-call benchmark times real router calls on fresh state each pass."""

from __future__ import annotations

from benchmarks.symbol_call import measure


def test_each_pass_makes_every_call_of_the_workload() -> None:
    costs = measure(per_symbol=2, symbols=5, ticks=500, repeat=2)
    assert len(costs) == 2
    # 500 trades over 5 symbols, 10 a flush: every flush calls each symbol it holds once.
    assert [c.trades for c in costs] == [500, 500]
    assert costs[0].calls == costs[1].calls
    assert 50 <= costs[0].calls <= 250
    assert all(c.us_per_call > 0 for c in costs)
