"""The flush-cost benchmark times every flush after the warm-up, on a real router."""

from __future__ import annotations

import time

import pytest

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


@pytest.mark.parametrize("busy", [False, True])
def test_a_gap_comes_before_each_flush_untimed(busy: bool) -> None:
    started = time.monotonic()
    cost = measure(per_symbol=2, symbols=5, ticks=1_000, gap=0.01, busy=busy)
    # 100 flushes, each after 10 ms asleep or busy-waiting, outside the flush's timing.
    assert time.monotonic() - started >= 100 * 0.01
    assert len(cost.seconds) == 100 - (WARM_TRADES * 5 // 10 + 1)
    assert sum(cost.seconds) > 0
    assert min(cost.seconds) < 0.01  # a busy-wait timed with the flush would be 10 ms at least
