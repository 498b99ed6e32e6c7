from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ingest.config import BarSpec, PipelineSettings
from ingest.pipeline import SymbolPipeline
from tests.pipeline._data import ESU4_BARS, load_btc_trades, load_esu4_trades, parse_ns, read_rows

MINUTE = 60_000_000_000
T0 = parse_ns("2024-07-02 00:00:00")


def _settings(*bars: BarSpec) -> PipelineSettings:
    return PipelineSettings(bars=bars)


def _feed(
    pipeline: SymbolPipeline, ts: list[int], price: list[float], size: list[float]
) -> list[dict[str, Any]]:
    out = pipeline.on_trades(
        np.array(ts, dtype=np.int64), np.array(price, dtype=np.float64), np.array(size)
    )
    return out.bars


def _all_bars(pipeline: SymbolPipeline, ts: Any, price: Any, size: Any) -> list[dict[str, Any]]:
    return pipeline.on_trades(ts, price, size).bars + pipeline.flush().bars


class TestDatabentoMinuteBars:
    def test_minute_bars_equal_the_vendor_bars(self) -> None:
        """120 real CME trades give exactly Databento's own ESU4 1-minute OHLCV bars."""
        trades = load_esu4_trades()
        pipeline = SymbolPipeline("ESU4", _settings(BarSpec("time", 60.0, "1m")))
        bars = _all_bars(pipeline, trades.ts, trades.price, trades.size)
        vendor = {parse_ns(r["ts_event"]): r for r in read_rows(ESU4_BARS) if r["symbol"] == "ESU4"}
        assert [b["ts"] for b in bars] == [T0 - 2 * MINUTE, T0 - MINUTE, T0, T0 + MINUTE]
        for bar in bars:
            expected = vendor[bar["ts"]]
            got = [bar[k] for k in ("open", "high", "low", "close", "volume")]
            want = [float(expected[k]) for k in ("open", "high", "low", "close", "volume")]
            assert got == want

    def test_trade_counts_and_vwaps_match_the_trades(self) -> None:
        """Trade counts are 13/15/68/24 and VWAPs those computed from the trades (1e-6)."""
        trades = load_esu4_trades()
        pipeline = SymbolPipeline("ESU4", _settings(BarSpec("time", 60.0, "1m")))
        bars = _all_bars(pipeline, trades.ts, trades.price, trades.size)
        assert [b["trade_count"] for b in bars] == [13, 15, 68, 24]
        expected = [5528.736111, 5528.728261, 5529.057143, 5529.256757]
        assert [b["vwap"] for b in bars] == pytest.approx(expected, abs=1e-6)

    def test_last_minute_is_only_emitted_by_flush_as_partial(self) -> None:
        """A bar closes when a later bucket's trade arrives; the 00:01 bar waits for flush."""
        trades = load_esu4_trades()
        pipeline = SymbolPipeline("ESU4", _settings(BarSpec("time", 60.0, "1m")))
        closed = pipeline.on_trades(trades.ts, trades.price, trades.size).bars
        flushed = pipeline.flush().bars
        assert [b["partial"] for b in closed] == [False, False, False]
        assert [(b["ts"], b["partial"]) for b in flushed] == [(T0 + MINUTE, True)]
        assert pipeline.flush().bars == []


class TestCryptoBarTotals:
    @pytest.mark.parametrize(
        "spec",
        [
            pytest.param(BarSpec("tick", 100.0, "100"), id="tick-100"),
            pytest.param(BarSpec("tick", 7.0, "7"), id="tick-7"),
            pytest.param(BarSpec("volume", 1.5, "1.5"), id="volume-1.5"),
            pytest.param(BarSpec("dollar", 100_000.0, "100000"), id="dollar-100k"),
            pytest.param(BarSpec("time", 5.0, "5s"), id="time-5s"),
        ],
    )
    def test_bars_add_up_to_the_trades(self, spec: BarSpec) -> None:
        """Volume, dollar volume and trade count over all bars (flush included) equal the input."""
        trades = load_btc_trades()
        pipeline = SymbolPipeline("BTC/USDT", _settings(spec))
        bars = _all_bars(pipeline, trades.ts, trades.price, trades.size)
        assert sum(b["trade_count"] for b in bars) == len(trades.ts)
        assert sum(b["volume"] for b in bars) == pytest.approx(trades.size.sum(), rel=1e-9)
        dollars = sum(b["vwap"] * b["volume"] for b in bars)
        assert dollars == pytest.approx((trades.price * trades.size).sum(), rel=1e-9)
        assert [b["partial"] for b in bars].count(True) == 1
        assert {b["bar_type"] for b in bars} == {spec.kind}
        assert {b["bar_size"] for b in bars} == {spec.label}

    def test_tick_bars_hold_exactly_n_trades(self) -> None:
        """Every closed tick:100 bar has 100 trades; the flushed remainder has the rest."""
        trades = load_btc_trades()
        pipeline = SymbolPipeline("BTC/USDT", _settings(BarSpec("tick", 100.0, "100")))
        bars = _all_bars(pipeline, trades.ts, trades.price, trades.size)
        assert [b["trade_count"] for b in bars] == [100] * 20 + [1]

    def test_count_bars_start_at_their_first_trade(self) -> None:
        """Tick, volume and dollar bars are stamped with their first trade's timestamp."""
        trades = load_btc_trades()
        pipeline = SymbolPipeline("BTC/USDT", _settings(BarSpec("tick", 100.0, "100")))
        bars = _all_bars(pipeline, trades.ts, trades.price, trades.size)
        assert [b["ts"] for b in bars] == trades.ts[::100].tolist()
        assert bars[0]["open"] == trades.price[0]
        assert bars[0]["close"] == trades.price[99]


class TestThresholdBars:
    def test_crossing_trade_closes_the_volume_bar_unsplit(self) -> None:
        """The trade that crosses the threshold belongs to the bar, whole; the next one opens."""
        pipeline = SymbolPipeline("X", _settings(BarSpec("volume", 10.0, "10")))
        bars = _feed(pipeline, [T0, T0 + 1, T0 + 2, T0 + 3], [1.0, 2.0, 3.0, 4.0], [4, 4, 7, 1])
        assert [(b["volume"], b["trade_count"], b["close"]) for b in bars] == [(15.0, 3, 3.0)]
        assert pipeline.flush().bars[0]["volume"] == 1.0

    def test_reaching_the_threshold_exactly_closes_the_bar(self) -> None:
        """Volume equal to the threshold is enough."""
        pipeline = SymbolPipeline("X", _settings(BarSpec("volume", 10.0, "10")))
        bars = _feed(pipeline, [T0, T0 + 1, T0 + 2], [1.0, 1.0, 1.0], [5, 5, 1])
        assert [b["volume"] for b in bars] == [10.0]

    def test_one_huge_trade_makes_one_bar(self) -> None:
        """A trade worth several bars is not split: it closes one bar on its own."""
        pipeline = SymbolPipeline("X", _settings(BarSpec("dollar", 100.0, "100")))
        bars = _feed(pipeline, [T0, T0 + 1, T0 + 2], [10.0, 10.0, 10.0], [1, 50, 1])
        assert [(b["trade_count"], b["volume"]) for b in bars] == [(2, 51.0)]
        assert bars[0]["vwap"] == 10.0

    def test_bars_span_batches(self) -> None:
        """A bar opened in one batch and closed in a later one holds both batches' trades."""
        pipeline = SymbolPipeline("X", _settings(BarSpec("tick", 3.0, "3")))
        assert _feed(pipeline, [T0, T0 + 1], [5.0, 7.0], [1, 1]) == []
        bars = _feed(pipeline, [T0 + 2, T0 + 3], [6.0, 1.0], [1, 1])
        assert [(b["open"], b["high"], b["low"], b["close"]) for b in bars] == [(5, 7, 5, 6)]


class TestTimeBars:
    @pytest.mark.parametrize(
        ("spec", "start"),
        [
            pytest.param(BarSpec("time", 5.0, "5s"), T0 + 35_000_000_000, id="5s"),
            pytest.param(BarSpec("time", 900.0, "15m"), T0, id="15m"),
            pytest.param(BarSpec("time", 3600.0, "1h"), T0, id="1h"),
            pytest.param(BarSpec("time", 86400.0, "1d"), T0, id="1d"),
        ],
    )
    def test_buckets_are_aligned_to_the_utc_clock(self, spec: BarSpec, start: int) -> None:
        """The bar's ts is the bucket start on the UTC clock, not the first trade's time."""
        pipeline = SymbolPipeline("X", _settings(spec))
        _feed(pipeline, [T0 + 37_123_456_789], [1.0], [1.0])
        (bar,) = pipeline.flush().bars
        assert bar["ts"] == start
        assert bar["bar_size"] == spec.label

    def test_gap_emits_no_empty_bars(self) -> None:
        """Minutes without trades produce no bars; the next trade opens its own minute."""
        pipeline = SymbolPipeline("X", _settings(BarSpec("time", 60.0, "1m")))
        bars = _feed(pipeline, [T0, T0 + 5 * MINUTE], [1.0, 2.0], [1.0, 1.0])
        assert [b["ts"] for b in bars] == [T0]
        assert [b["ts"] for b in pipeline.flush().bars] == [T0 + 5 * MINUTE]


class TestLateTrades:
    def test_late_trade_is_counted_and_left_out(self) -> None:
        """A trade older than the open bucket never changes the bar it belongs to."""
        pipeline = SymbolPipeline("X", _settings(BarSpec("time", 60.0, "1m")))
        closed = _feed(pipeline, [T0 + 1, T0 + MINUTE + 1], [10.0, 11.0], [1.0, 1.0])
        late = _feed(pipeline, [T0 + 30, T0 + MINUTE + 2], [99.0, 12.0], [5.0, 1.0])
        (open_bar,) = pipeline.flush().bars
        assert late == []
        assert pipeline.late_trades == 1
        assert (closed[0]["high"], closed[0]["volume"], closed[0]["trade_count"]) == (10, 1, 1)
        assert (open_bar["high"], open_bar["volume"], open_bar["trade_count"]) == (12, 2, 2)
        assert open_bar["vwap"] == 11.5

    def test_late_trade_within_a_batch(self) -> None:
        """Out-of-order trades inside one batch are judged against the newest bucket seen."""
        pipeline = SymbolPipeline("X", _settings(BarSpec("time", 60.0, "1m")))
        ts = [T0, T0 + MINUTE, T0 + 5, T0 + MINUTE + 1]
        bars = _feed(pipeline, ts, [1.0, 2.0, 50.0, 3.0], [1.0, 1.0, 1.0, 1.0])
        flushed = pipeline.flush().bars
        assert [(b["close"], b["volume"]) for b in bars] == [(1.0, 1.0)]
        assert [(b["high"], b["volume"], b["vwap"]) for b in flushed] == [(3.0, 2.0, 2.5)]
        assert pipeline.late_trades == 1

    def test_trades_in_the_open_bucket_out_of_order_are_not_late(self) -> None:
        """Order inside the open bucket does not matter; close is the last trade to arrive."""
        pipeline = SymbolPipeline("X", _settings(BarSpec("time", 60.0, "1m")))
        _feed(pipeline, [T0 + 50, T0 + 10], [1.0, 2.0], [1.0, 1.0])
        (bar,) = pipeline.flush().bars
        assert pipeline.late_trades == 0
        assert (bar["open"], bar["close"], bar["trade_count"]) == (1.0, 2.0, 2)

    def test_late_trades_still_count_in_tick_bars(self) -> None:
        """Tick, volume and dollar bars follow arrival order, so nothing is late for them."""
        spec = (BarSpec("time", 60.0, "1m"), BarSpec("tick", 3.0, "3"))
        pipeline = SymbolPipeline("X", _settings(*spec))
        bars = _feed(pipeline, [T0 + MINUTE, T0, T0 + MINUTE], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
        assert [(b["bar_type"], b["trade_count"]) for b in bars] == [("tick", 3)]
        assert pipeline.late_trades == 1

    def test_late_trades_counted_once_across_time_series(self) -> None:
        """A trade late for two time series is one late trade."""
        spec = (BarSpec("time", 60.0, "1m"), BarSpec("time", 30.0, "30s"))
        pipeline = SymbolPipeline("X", _settings(*spec))
        _feed(pipeline, [T0 + MINUTE, T0], [1.0, 2.0], [1.0, 1.0])
        assert pipeline.late_trades == 1


class TestPartialFlush:
    def test_flush_emits_every_open_bar_as_partial(self) -> None:
        """At shutdown each series' open bar comes out once, marked partial."""
        pipeline = SymbolPipeline("X", PipelineSettings())
        _feed(pipeline, [T0, T0 + 1], [100.0, 101.0], [10.0, 10.0])
        bars = pipeline.flush().bars
        assert [(b["bar_type"], b["partial"], b["trade_count"]) for b in bars] == [
            ("time", True, 2),
            ("tick", True, 2),
            ("volume", True, 2),
            ("dollar", True, 2),
        ]

    def test_trades_after_flush_open_new_bars(self) -> None:
        """Flush ends every bar; a later trade (even of the same minute) opens a fresh one."""
        pipeline = SymbolPipeline("X", _settings(BarSpec("time", 60.0, "1m")))
        _feed(pipeline, [T0 + 1], [10.0], [1.0])
        pipeline.flush()
        _feed(pipeline, [T0 + 2], [20.0], [2.0])
        (bar,) = pipeline.flush().bars
        assert (bar["ts"], bar["open"], bar["volume"], bar["trade_count"]) == (T0, 20.0, 2.0, 1)

    def test_flush_of_an_empty_pipeline_is_empty(self) -> None:
        """No trades, no bars."""
        assert SymbolPipeline("X", PipelineSettings()).flush().bars == []

    def test_flushed_bar_carries_session_vwap(self) -> None:
        """The partial bar reports the session VWAP at its last trade."""
        pipeline = SymbolPipeline("X", _settings(BarSpec("tick", 10.0, "10")))
        _feed(pipeline, [T0, T0 + 1], [100.0, 104.0], [3.0, 1.0])
        assert pipeline.flush().bars[0]["session_vwap"] == 101.0


class TestSessionVwap:
    def test_session_vwap_is_cumulative_over_trades(self) -> None:
        """Each bar reports sum(price * size) / sum(size) of the day's trades up to its close."""
        pipeline = SymbolPipeline("X", _settings(BarSpec("tick", 2.0, "2")))
        bars = _feed(pipeline, [T0 + i for i in range(4)], [10.0, 20.0, 30.0, 40.0], [1, 3, 1, 5])
        assert [b["session_vwap"] for b in bars] == [17.5, 30.0]

    def test_session_restarts_at_utc_midnight(self) -> None:
        """The first trade of a new UTC day starts a new session."""
        pipeline = SymbolPipeline("X", _settings(BarSpec("tick", 1.0, "1")))
        bars = _feed(pipeline, [T0 - 1, T0, T0 + 1], [10.0, 20.0, 30.0], [1.0, 1.0, 1.0])
        assert [b["session_vwap"] for b in bars] == [10.0, 20.0, 25.0]

    def test_trade_of_an_earlier_day_stays_out_of_the_session(self) -> None:
        """A straggler stamped yesterday does not move today's session VWAP."""
        pipeline = SymbolPipeline("X", _settings(BarSpec("tick", 1.0, "1")))
        bars = _feed(pipeline, [T0, T0 - 1, T0 + 1], [20.0, 1000.0, 30.0], [1.0, 1.0, 1.0])
        assert [b["session_vwap"] for b in bars] == [20.0, 20.0, 25.0]
        assert [b["volume"] for b in bars] == [1.0, 1.0, 1.0]

    def test_volume_bar_spanning_midnight_keeps_both_days(self) -> None:
        """A threshold bar open at midnight adds both days' trades."""
        pipeline = SymbolPipeline("X", _settings(BarSpec("volume", 5.0, "5")))
        bars = _feed(pipeline, [T0 - 2, T0 - 1, T0, T0 + 1], [1.0, 2.0, 3.0, 4.0], [1, 1, 1, 2])
        assert [(b["volume"], b["trade_count"], b["vwap"]) for b in bars] == [(5.0, 4, 2.8)]
