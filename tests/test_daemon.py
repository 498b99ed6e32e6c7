"""The daemon end to end on the sim source: every stream, through the pipeline, into Parquet."""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import anyio
import pyarrow as pa
import pyarrow.parquet as pq
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from ingest.app import run_daemon
from ingest.metrics import Metrics
from ingest.pipeline import PipelineOutput, SymbolPipeline
from streams.sim import SimSource
from tests.dataset import TYPE_TABLE, count, leftovers, query

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from ingest.config import PipelineSettings, Settings


def run_sim(settings: Settings, seconds: float = 1.5, **kwargs: Any) -> SimSource:
    """Run the daemon on the sim source in its own event loop (test reads stay off the loop)."""
    source = SimSource(settings, settings.ingest.streams)
    anyio.run(functools.partial(run_daemon, settings, source, duration=seconds, **kwargs))
    return source


class TestAllStreams:
    def test_every_emitted_message_lands_exactly_once(self, settings: Settings) -> None:
        """Rows per table equal what the source emitted: nothing lost, nothing duplicated."""
        source = run_sim(settings)
        root = settings.ingest.data_dir
        assert source.emitted, "the sim emitted nothing"
        for (stream, tag), emitted in source.emitted.items():
            assert count(root, stream, TYPE_TABLE[tag]) == emitted, (stream, tag)
        for stream in ("stocks", "crypto"):
            dupes = query(
                root,
                stream,
                "trades",
                "select count(*) from (select symbol, trade_id from t "
                "group by all having count(*) > 1)",
            )
            assert dupes == [(0,)]

    def test_all_four_streams_write(self, settings: Settings) -> None:
        """Stocks, crypto and options write trades, quotes and bars; news writes articles."""
        run_sim(settings.replace(sim=dataclasses.replace(settings.sim, news_per_minute=600)))
        root = settings.ingest.data_dir
        for stream in ("stocks", "crypto", "options"):
            for table in ("trades", "quotes", "bars"):
                assert count(root, stream, table) > 0, (stream, table)
        assert count(root, "news", "articles") > 0

    def test_bars_come_from_the_trades(self, settings: Settings) -> None:
        """The 1-minute bars hold exactly the trades: per symbol, volume and count agree."""
        run_sim(settings)
        root = settings.ingest.data_dir
        bars = query(
            root,
            "stocks",
            "bars",
            "select symbol, sum(volume), sum(trade_count) from t "
            "where bar_type = 'time' group by symbol order by symbol",
        )
        trades = query(
            root,
            "stocks",
            "trades",
            "select symbol, sum(size), count(*) from t group by symbol order by symbol",
        )
        assert bars == trades

    def test_files_are_sealed_and_marked_simulated(self, settings: Settings) -> None:
        """No temporary file is left; Parquet metadata says the data is simulated."""
        run_sim(settings)
        root = settings.ingest.data_dir
        assert leftovers(root) == []
        files = list(root.glob("stocks/trades/date=*/*.parquet"))
        assert files
        metadata = pq.read_schema(files[0]).metadata
        assert metadata[b"ingest.simulated"] == b"true"
        assert metadata[b"ingest.source"] == b"sim"

    def test_layout_is_hive_partitioned_by_utc_date(self, settings: Settings) -> None:
        """Files live under <stream>/<table>/date=YYYY-MM-DD/ for the trades' UTC date."""
        run_sim(settings)
        dirs = {p.parent.name for p in settings.ingest.data_dir.glob("*/trades/*/*.parquet")}
        assert dirs == {"date=2024-07-01"}

    def test_rows_sorted_by_symbol_and_time(self, settings: Settings) -> None:
        """Within a file rows are sorted by (symbol, ts); symbol is dictionary-encoded."""
        run_sim(settings)
        for path in settings.ingest.data_dir.glob("*/trades/*/*.parquet"):
            table = pq.read_table(path)
            assert str(table.schema.field("symbol").type).startswith("dictionary")
            keys = list(
                zip(
                    table["symbol"].to_pylist(),
                    table["ts"].cast(pa.int64()).to_pylist(),
                    strict=True,
                )
            )
            assert keys == sorted(keys)

    def test_roll_rows_splits_files(self, settings: Settings) -> None:
        """A small roll_rows seals many files; together they still hold every row once."""
        small = settings.replace(storage=dataclasses.replace(settings.storage, roll_rows=50))
        source = run_sim(small)
        root = settings.ingest.data_dir
        assert len(list(root.glob("stocks/trades/*/*.parquet"))) > 1
        assert count(root, "stocks", "trades") == source.emitted[("stocks", "t")]


class TestStreamSelection:
    def test_only_the_chosen_streams_run(self, settings: Settings) -> None:
        """Streams = options,crypto writes exactly those two streams."""
        chosen = settings.replace(
            ingest=dataclasses.replace(settings.ingest, streams=("crypto", "options"))
        )
        run_sim(chosen)
        written = {p.name for p in settings.ingest.data_dir.iterdir() if not p.name.startswith("_")}
        assert written == {"crypto", "options"}


class _FailingPipeline(SymbolPipeline):
    """A pipeline whose every batch raises: an injected bug in one symbol."""

    def on_trades(
        self,
        ts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        size: npt.NDArray[np.float64],
    ) -> PipelineOutput:
        msg = "injected failure"
        raise RuntimeError(msg)


def _fail_msft(symbol: str, pipeline: PipelineSettings) -> SymbolPipeline:
    return (_FailingPipeline if symbol == "MSFT" else SymbolPipeline)(symbol, pipeline)


class TestFailureIsolation:
    def test_failing_symbol_does_not_stop_the_others(self, settings: Settings) -> None:
        """MSFT's pipeline raises on every batch; other symbols' bars and every trade still land."""
        stocks = settings.replace(ingest=dataclasses.replace(settings.ingest, streams=("stocks",)))
        with capture_logs(processors=[merge_contextvars]) as logs:
            source = run_sim(stocks, pipeline_factory=_fail_msft)
        root = settings.ingest.data_dir
        bar_symbols = {row[0] for row in query(root, "stocks", "bars", "select symbol from t")}
        assert bar_symbols == {"AAPL", "NVDA", "SPY", "TSLA"}
        assert count(root, "stocks", "trades") == source.emitted[("stocks", "t")]
        failures = [e for e in logs if e["event"] == "symbol_task_failed"]
        assert failures
        assert {e["symbol"] for e in failures} == {"MSFT"}
        assert all(e["stream"] == "stocks" for e in failures)
        stopped = next(e for e in logs if e["event"] == "daemon_stopped")
        assert stopped["symbol_failures"] == len(failures)


class TestRolling:
    def test_roll_seconds_seals_files_while_running(self, settings: Settings) -> None:
        """A short roll_seconds seals several files during one run, each row once."""
        fast = settings.replace(storage=dataclasses.replace(settings.storage, roll_seconds=0.3))
        source = run_sim(fast, seconds=2.0)
        root = settings.ingest.data_dir
        assert len(list(root.glob("stocks/trades/*/*.parquet"))) >= 3
        assert count(root, "stocks", "trades") == source.emitted[("stocks", "t")]


class TestMetrics:
    def test_rows_and_seal_latency_follow_every_sealed_row(self, settings: Settings) -> None:
        """rows_written and the receive-to-seal histogram count exactly the rows on disk."""
        metrics = Metrics()
        run_sim(settings, metrics=metrics)
        root = settings.ingest.data_dir
        on_disk = count(root, "stocks", "trades")
        assert on_disk > 0
        assert metrics.rows.get("stocks", "trades") == on_disk
        buckets = metrics.seal_latency.counts[("stocks", "trades")]
        assert sum(buckets) == on_disk
        assert metrics.messages.get("stocks", "trades") == on_disk
        assert 'ingest_queue_depth{stream="stocks"}' in metrics.render()


class TestPerformanceLog:
    def test_one_line_per_stream_each_interval(self, settings: Settings) -> None:
        """Every interval, one stream_progress line per stream with rates, errors and depth."""
        with capture_logs() as logs:
            run_sim(settings, seconds=1.6, progress_seconds=0.5)
        lines = [e for e in logs if e["event"] == "stream_progress"]
        assert {e["stream"] for e in lines} == set(settings.ingest.streams)
        assert len(lines) >= 2 * len(settings.ingest.streams)
        for key in ("msgs_per_s", "rows_per_s", "queue_depth", "errors", "lag_s"):
            assert all(key in e for e in lines), key
