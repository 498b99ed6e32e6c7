from __future__ import annotations

import numpy as np

from ingest.config import AnomalySettings, BarSpec, PipelineSettings
from ingest.pipeline import SymbolPipeline, indicator_columns
from storage.schemas import bars_spec, table_spec
from tests.pipeline._data import load_esu4_trades


class TestRowsFitTheSchemas:
    def test_bar_rows_have_exactly_the_bars_columns(self) -> None:
        """Every key of a bar row is a `bars` column, and every column but recv_ts is filled."""
        settings = PipelineSettings()
        trades = load_esu4_trades()
        pipeline = SymbolPipeline("ESU4", settings)
        rows = pipeline.on_trades(trades.ts, trades.price, trades.size).bars
        rows += pipeline.flush().bars
        spec = bars_spec(indicator_columns(settings))
        for row in rows:
            assert set(row) == set(spec.schema.names) - {"recv_ts"}
        table = spec.to_table(rows)
        assert table.num_rows == len(rows)
        assert table.column("close").to_pylist() == [r["close"] for r in rows]
        stamps = table.column("ts").to_numpy().astype(np.int64).tolist()
        assert stamps == [r["ts"] for r in rows]

    def test_anomaly_rows_have_exactly_the_anomalies_columns(self) -> None:
        """Anomaly rows convert to the `anomalies` table without loss."""
        settings = PipelineSettings(bars=(), anomaly=AnomalySettings(window=5, threshold=1.0))
        pipeline = SymbolPipeline("X", settings)
        prices = np.array([10.0, 10.1, 9.9, 10.0, 10.05, 12.0])
        ts = 1_719_878_400_000_000_000 + np.arange(6, dtype=np.int64)
        rows = pipeline.on_trades(ts, prices, np.ones(6)).anomalies
        spec = table_spec("stocks", "anomalies", ())
        assert len(rows) == 1
        assert set(rows[0]) == set(spec.schema.names) - {"recv_ts"}
        table = spec.to_table(rows)
        assert table.column("zscore").to_pylist() == [rows[0]["zscore"]]
        assert table.column("window").to_pylist() == [5]


class TestAllSeriesTogether:
    def test_each_series_keeps_its_own_indicators(self) -> None:
        """Indicator state is per series: tick bars warm up independently of time bars."""
        trades = load_esu4_trades()
        settings = PipelineSettings(
            bars=(BarSpec("time", 60.0, "1m"), BarSpec("tick", 10.0, "10")),
            sma=(3,),
            ema=(2, 4),
            rsi=2,
            volatility=2,
            momentum=2,
            zscore=3,
        )
        pipeline = SymbolPipeline("ESU4", settings)
        rows = pipeline.on_trades(trades.ts, trades.price, trades.size).bars
        rows += pipeline.flush().bars
        by_series: dict[str, list[float | None]] = {}
        for row in rows:
            by_series.setdefault(row["bar_type"], []).append(row["sma_3"])
        assert {k: len(v) for k, v in by_series.items()} == {"time": 4, "tick": 12}
        for values in by_series.values():
            assert values[:2] == [None, None]
            assert all(v is not None for v in values[2:])
