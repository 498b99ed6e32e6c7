from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.config import AnomalySettings, BarSpec, PipelineSettings
from ingest.pipeline import SymbolPipeline

MIDNIGHT = 1_719_878_400_000_000_000
SECOND = 1_000_000_000

# Small windows and thresholds so that short examples close many bars and flag trades.
SMALL = PipelineSettings(
    bars=(
        BarSpec("time", 1.0, "1s"),
        BarSpec("time", 60.0, "1m"),
        BarSpec("tick", 7.0, "7"),
        BarSpec("volume", 50.0, "50"),
        BarSpec("dollar", 5000.0, "5000"),
    ),
    sma=(2, 3),
    ema=(2, 4),
    rsi=3,
    volatility=3,
    momentum=2,
    zscore=3,
    anomaly=AnomalySettings(window=5, threshold=1.5),
)
SMALL_IQR = PipelineSettings(
    bars=SMALL.bars,
    sma=SMALL.sma,
    ema=SMALL.ema,
    rsi=3,
    volatility=3,
    momentum=2,
    zscore=3,
    anomaly=AnomalySettings(window=4, threshold=0.5, method="iqr"),
)


@st.composite
def trade_streams(draw: st.DrawFn) -> tuple[Any, Any, Any]:
    """Trades around a UTC midnight: jittered clock with late stragglers, a random walk."""
    n = draw(st.integers(1, 160))
    gaps = draw(st.lists(st.integers(0, 3 * SECOND), min_size=n, max_size=n))
    back = draw(
        st.lists(st.sampled_from([0, 0, 0, 0, 0, SECOND, 90 * SECOND]), min_size=n, max_size=n)
    )
    start = MIDNIGHT - draw(st.integers(0, 120)) * SECOND
    ts = start + np.cumsum(np.array(gaps, dtype=np.int64)) - np.array(back, dtype=np.int64)
    steps = draw(
        st.lists(st.sampled_from([-0.5, -0.25, 0.0, 0.25, 0.5, 3.0]), min_size=n, max_size=n)
    )
    price = np.round(100.0 + np.cumsum(steps), 2)
    sizes = draw(
        st.lists(st.sampled_from([0.0, 0.001, 0.3, 1.0, 7.0, 25.0, 60.0]), min_size=n, max_size=n)
    )
    return ts, price, np.array(sizes)


def _run(
    config: PipelineSettings,
    ts: npt.NDArray[np.int64],
    price: npt.NDArray[np.float64],
    size: npt.NDArray[np.float64],
    cuts: list[int],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    pipeline = SymbolPipeline("X", config)
    bars: list[dict[str, Any]] = []
    anomalies: list[dict[str, Any]] = []
    bounds = [0, *sorted(set(cuts)), len(ts)]
    for start, end in itertools.pairwise(bounds):
        if end > start:
            out = pipeline.on_trades(ts[start:end], price[start:end], size[start:end])
            bars += out.bars
            anomalies += out.anomalies
    bars += pipeline.flush().bars
    return bars, anomalies, pipeline.late_trades


class TestStreamingEqualsBatch:
    @settings(max_examples=150, deadline=None)
    @given(trade_streams(), st.data())
    def test_any_batching_gives_identical_output(self, stream: Any, data: st.DataObject) -> None:
        """One trade at a time, random batches and one batch give the very same rows."""
        ts, price, size = stream
        n = len(ts)
        cuts = data.draw(st.lists(st.integers(1, max(1, n - 1)), max_size=12))
        for config in (SMALL, SMALL_IQR):
            whole = _run(config, ts, price, size, [])
            assert _run(config, ts, price, size, list(range(1, n))) == whole
            assert _run(config, ts, price, size, cuts) == whole

    def test_example_exercises_every_path(self) -> None:
        """A fixed stream closes bars of every kind, has late trades, anomalies and a midnight."""
        rng = np.random.default_rng(11)
        n = 400
        ts = MIDNIGHT - 60 * SECOND + np.cumsum(rng.integers(0, SECOND // 2, n))
        ts[::37] -= 70 * SECOND
        price = np.round(100.0 + np.cumsum(rng.choice([-0.5, 0.0, 0.5, 4.0], n)), 2)
        size = rng.choice([0.3, 1.0, 7.0, 30.0], n)
        whole = _run(SMALL, ts, price, size, [])
        bars, anomalies, late = whole
        assert {b["bar_type"] for b in bars} == {"time", "tick", "volume", "dollar"}
        assert anomalies
        assert late > 0
        assert any(b["ts"] < MIDNIGHT for b in bars)
        assert any(b["ts"] >= MIDNIGHT for b in bars)
        assert any(b["trend"] is not None for b in bars)
        assert _run(SMALL, ts, price, size, list(range(1, n))) == whole
        assert _run(SMALL, ts, price, size, list(range(3, n, 50))) == whole
