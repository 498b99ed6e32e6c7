"""The flush-cost benchmark times every flush after the warm-up, on a real router."""

from __future__ import annotations

from benchmarks.flush_cost import WARM_TRADES, measure


def test_times_each_flush_after_the_warm_up() -> None:
    cost = measure(per_symbol=2, symbols=5, ticks=1_000)
    # 1,000 trades over 5 symbols, 10 a flush; the first WARM_TRADES a symbol are not timed.
    warm = WARM_TRADES * 5 // 10 + 1
    assert cost.trades == 10
    assert len(cost.seconds) == len(cost.touched) == 100 - warm
    assert all(1 <= n <= 5 for n in cost.touched)
    assert sum(cost.seconds) > 0
    per_symbol = cost.per_symbol_us()
    assert per_symbol == sorted(per_symbol)
    assert len(per_symbol) == len(cost.seconds)
    # The steady step takes these small batches: its observation is inside each flush.
    assert len(cost.observed) == len(cost.seconds)
    assert all(0 < at <= whole for at, whole in zip(cost.observed, cost.seconds, strict=True))
    # ...where the reference call is made twice, in every one of those flushes.
    assert len(cost.reference) == len(cost.observed)
    assert all(cold > 0 and warm > 0 for cold, warm in cost.reference)
