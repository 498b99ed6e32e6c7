from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ingest.config import AnomalySettings, BarSpec, PipelineSettings
from ingest.pipeline import SymbolPipeline
from ingest.pipeline.anomaly import AnomalyDetector, quantile_linear

FloatArray = npt.NDArray[np.float64]
T0 = 1_719_878_400_000_000_000

# Twenty quiet prices around 100, then a spike.
QUIET = [100.0 + 0.01 * (i % 5 - 2) for i in range(20)]


def _expected_z(window: list[float], price: float) -> float:
    values = np.array(window)
    return float((price - values.mean()) / values.std())


class TestZscore:
    def test_spike_is_flagged_with_its_zscore(self) -> None:
        """A trade far outside the previous 20 prices comes out with z against those 20."""
        pipeline = SymbolPipeline("X", PipelineSettings(bars=()))
        prices = np.array([*QUIET, 101.0])
        ts = T0 + np.arange(len(prices), dtype=np.int64)
        out = pipeline.on_trades(ts, prices, np.ones(len(prices)))
        (row,) = out.anomalies
        assert row["ts"] == int(ts[-1])
        assert row["price"] == 101.0
        assert row["zscore"] == pytest.approx(_expected_z(QUIET, 101.0), rel=1e-12)
        assert (row["method"], row["window"], row["threshold"]) == ("zscore", 20, 3.0)
        assert row["symbol"] == "X"

    def test_quiet_prices_are_not_flagged(self) -> None:
        """A price inside the usual spread is no anomaly."""
        detector = AnomalyDetector(AnomalySettings())
        assert detector.detect(np.array([*QUIET, 100.01])) == []

    def test_no_checks_during_warm_up(self) -> None:
        """The first `window` trades only fill the window, however wild."""
        detector = AnomalyDetector(AnomalySettings(window=5))
        assert detector.detect(np.array([1.0, 1000.0, 1.0, 1000.0, 1.0])) == []

    def test_window_spans_batches(self) -> None:
        """The previous prices can come from earlier batches."""
        detector = AnomalyDetector(AnomalySettings())
        assert detector.detect(np.array(QUIET)) == []
        (hit,) = detector.detect(np.array([99.0]))
        assert hit.index == 0
        assert hit.zscore == pytest.approx(_expected_z(QUIET, 99.0), rel=1e-12)

    def test_flat_window_has_no_zscore(self) -> None:
        """Equal prices have no spread: no z-score, so no z-score flag."""
        detector = AnomalyDetector(AnomalySettings(window=3))
        assert detector.detect(np.array([5.0, 5.0, 5.0, 6.0])) == []

    def test_threshold_is_strict(self) -> None:
        """|z| must exceed the threshold; a lower threshold flags more."""
        prices = np.array([*QUIET, 100.03])
        z = _expected_z(QUIET, 100.03)
        below = AnomalyDetector(AnomalySettings(threshold=z + 1e-9)).detect(prices)
        above = AnomalyDetector(AnomalySettings(threshold=z - 1e-9)).detect(prices)
        assert (below, len(above)) == ([], 1)


class TestIqr:
    def test_outside_the_fences_is_flagged_with_zscore(self) -> None:
        """Outside [Q1 - k*IQR, Q3 + k*IQR] is flagged; the row reports the z-score too."""
        pipeline = SymbolPipeline(
            "X", PipelineSettings(bars=(), anomaly=AnomalySettings(method="iqr", threshold=1.5))
        )
        prices = np.array([*QUIET, 100.05, 100.2])
        out = pipeline.on_trades(T0 + np.arange(22, dtype=np.int64), prices, np.ones(22))
        q1, q3 = np.percentile(np.array([*QUIET[1:], 100.05]), [25, 75])
        assert 100.2 > q3 + 1.5 * (q3 - q1)
        assert [r["price"] for r in out.anomalies] == [100.05, 100.2]
        assert out.anomalies[0]["zscore"] == pytest.approx(_expected_z(QUIET, 100.05), rel=1e-12)
        assert out.anomalies[0]["method"] == "iqr"

    def test_inside_the_fences_is_not_flagged(self) -> None:
        """A price between the fences passes."""
        detector = AnomalyDetector(AnomalySettings(method="iqr", threshold=1.5))
        assert detector.detect(np.array([*QUIET, 100.02])) == []

    def test_flat_window_flags_any_change_without_zscore(self) -> None:
        """With IQR 0 any other price is outside; its z-score is None (no spread)."""
        detector = AnomalyDetector(AnomalySettings(window=3, method="iqr"))
        (hit,) = detector.detect(np.array([5.0, 5.0, 5.0, 6.0]))
        assert (hit.price, hit.zscore) == (6.0, None)

    @given(
        arrays(
            np.float64,
            st.tuples(st.integers(1, 6), st.integers(1, 30)),
            elements=st.floats(-1e6, 1e6),
        )
    )
    def test_quartiles_equal_numpy(self, rows: FloatArray) -> None:
        """The hand-written linear quantile equals np.quantile exactly."""
        ordered = np.sort(rows, axis=1)
        for q in (0.25, 0.5, 0.75):
            np.testing.assert_array_equal(quantile_linear(ordered, q), np.quantile(rows, q, axis=1))


class TestPipelineWiring:
    def test_anomalies_run_without_bars(self) -> None:
        """Anomaly rows do not depend on any bar series being configured."""
        pipeline = SymbolPipeline("X", PipelineSettings(bars=(BarSpec("tick", 5.0, "5"),)))
        prices = np.array([*QUIET, 120.0])
        out = pipeline.on_trades(T0 + np.arange(21, dtype=np.int64), prices, np.ones(21))
        assert len(out.anomalies) == 1
        assert len(out.bars) == 4
