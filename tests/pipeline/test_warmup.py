"""Indicator warm-up: a series fed its history has every indicator at its first live bar."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.config import BarSpec, PipelineSettings
from ingest.pipeline import SymbolPipeline
from ingest.warmup import warmup_bars
from tests.pipeline._data import SPY_1MIN, column, read_rows

SETTINGS = PipelineSettings(bars=(BarSpec("time", 60.0, "1m"),), sma=(20,), ema=(20,), rsi=14)
MINUTE = 60_000_000_000
T0 = 1_608_042_600 * 1_000_000_000  # 2020-12-15 14:30 UTC


class TestWarmupBars:
    def test_default_windows_need_26_closes(self) -> None:
        """ema_26 needs 26 closes; RSI, volatility and momentum need one more than their window."""
        assert warmup_bars(PipelineSettings()) == 26
        assert warmup_bars(PipelineSettings(sma=(5,), ema=(3,), rsi=30)) == 31


class TestWarmedSeries:
    def test_first_live_bar_has_talibs_values(self) -> None:
        """Warmed with 21 SPY closes, the first live bar equals TA-Lib's values at index 21."""
        rows = read_rows(SPY_1MIN)
        closes = column(rows, "close")
        need = warmup_bars(SETTINGS)
        assert need == 21
        pipeline = SymbolPipeline("SPY", SETTINGS)
        assert pipeline.warm_up({("time", "1m"): closes[:need].tolist()}) == 1
        ts = np.array([T0, T0 + MINUTE], dtype=np.int64)
        price = np.array([closes[need], closes[need + 1]])
        (bar,) = pipeline.on_trades(ts, price, np.ones(2)).bars
        for name, reference in (("sma_20", "sma20"), ("ema_20", "ema20"), ("rsi_14", "rsi14")):
            # The reference file holds seven decimals.
            assert bar[name] == pytest.approx(column(rows, reference)[need], abs=1e-6), name
        assert bar["volatility_20"] is not None
        assert bar["momentum_10"] == pytest.approx(closes[need] - closes[need - 10])

    def test_without_warmup_the_first_bar_has_no_indicators(self) -> None:
        """The contrast: a cold series has nothing defined at its first bar."""
        pipeline = SymbolPipeline("SPY", SETTINGS)
        ts = np.array([T0, T0 + MINUTE], dtype=np.int64)
        (bar,) = pipeline.on_trades(ts, np.array([1.0, 2.0]), np.ones(2)).bars
        assert bar["sma_20"] is None
        assert bar["rsi_14"] is None

    def test_other_series_are_left_cold(self) -> None:
        """Closes are per series: a tick series given none stays cold."""
        settings = PipelineSettings(bars=(BarSpec("time", 60.0, "1m"), BarSpec("tick", 2.0, "2")))
        pipeline = SymbolPipeline("X", settings)
        assert pipeline.warm_up({("time", "1m"): [1.0] * 30}) == 1
        ts = np.array([T0, T0 + 1, T0 + MINUTE], dtype=np.int64)
        bars = pipeline.on_trades(ts, np.array([1.0, 1.0, 1.0]), np.ones(3)).bars
        by_type = {bar["bar_type"]: bar for bar in bars}
        assert by_type["time"]["sma_5"] == 1.0
        assert by_type["tick"]["sma_5"] is None
