"""De-duplication: what the dataset holds is dropped, what is new passes, cheaply once past."""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pyarrow.parquet as pq
import pytest

from ingest.app import run_daemon
from ingest.metrics import Metrics
from storage.dedup import DedupFilter
from storage.schemas import bars_spec, table_spec
from streams.base import Frame
from streams.messages import FrameDecoder, StockQuote, StockTrade
from streams.sim import SimSource
from tests.dataset import count, query

if TYPE_CHECKING:
    from pathlib import Path

BASE = 1_719_844_200  # 2024-07-01T14:30:00Z


def stamp(second: float) -> str:
    whole = int(second)
    nanos = round((second - whole) * 1e9)
    return f"2024-07-01T14:{30 + whole // 60:02d}:{whole % 60:02d}.{nanos:09d}Z"


def trade(i: int, second: float, symbol: str = "AAPL") -> StockTrade:
    return StockTrade(S=symbol, t=stamp(second), i=i, x="V", p=100.0 + i, s=1.0, recv_ns=1)


def store(root: Path, table: str, records: list[Any], name: str = "part-a.parquet") -> None:
    spec = table_spec("stocks", table, ())
    directory = root / "stocks" / table / "date=2024-07-01"
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(spec.to_table(records), directory / name)


def rows(records: list[Any]) -> Any:
    return table_spec("stocks", "trades", ()).to_table(records)


@pytest.fixture
def dedup(tmp_path: Path) -> DedupFilter:
    """Trades 1..10 stored, one a second from 14:30:01 to 14:30:10; a 5 s horizon."""
    store(tmp_path, "trades", [trade(i, i) for i in range(1, 11)])
    found = DedupFilter(5.0)
    found.seed(tmp_path, ["stocks"])
    return found


class TestAdmit:
    def test_newer_than_the_watermark_passes(self, dedup: DedupFilter) -> None:
        """A row after the newest stored one is new without looking at its keys."""
        assert dedup.admit("stocks", "trades", rows([trade(11, 11), trade(12, 12)])).all()

    def test_stored_keys_within_the_horizon_are_dropped(self, dedup: DedupFilter) -> None:
        """Within the horizon a row is dropped exactly when its keys are stored."""
        mask = dedup.admit("stocks", "trades", rows([trade(8, 8), trade(99, 8), trade(10, 10)]))
        assert mask.tolist() == [False, True, False]
        assert dedup.dropped[("stocks", "trades")] == 2

    def test_older_than_the_horizon_counts_as_stored(self, dedup: DedupFilter) -> None:
        """Before watermark - horizon everything is taken as stored (a replay from the start)."""
        assert not dedup.admit("stocks", "trades", rows([trade(2, 2), trade(77, 3)])).any()

    def test_a_second_copy_of_a_new_row_is_dropped(self, dedup: DedupFilter) -> None:
        """An admitted row within the window is remembered: sent twice, it is stored once."""
        assert dedup.admit("stocks", "trades", rows([trade(50, 9)])).tolist() == [True]
        assert dedup.admit("stocks", "trades", rows([trade(50, 9)])).tolist() == [False]

    def test_state_retires_once_past_the_horizon(self, dedup: DedupFilter) -> None:
        """Rows all newer than watermark + horizon end the checks for good: one lookup a frame."""
        assert dedup.active("stocks")
        dedup.admit("stocks", "trades", rows([trade(20, 16)]))
        assert not dedup.active("stocks")
        assert dedup.admit("stocks", "trades", rows([trade(8, 8)])).all()

    def test_remember_opens_a_state_without_a_floor(self, tmp_path: Path) -> None:
        """For a back-fill: remembered rows are dropped later, older unknown rows still pass."""
        dedup = DedupFilter(5.0)
        assert not dedup.active("stocks")
        dedup.remember("stocks", "trades", rows([trade(5, 5), trade(6, 6)]))
        assert dedup.active("stocks")
        mask = dedup.admit("stocks", "trades", rows([trade(1, 1), trade(5, 5), trade(7, 7)]))
        assert mask.tolist() == [True, False, True]

    def test_empty_dataset_checks_nothing(self, tmp_path: Path) -> None:
        """Nothing stored: no state, every stream passes untouched."""
        dedup = DedupFilter(60.0)
        dedup.seed(tmp_path, ["stocks", "crypto"])
        assert not dedup.active("stocks")
        assert dedup.admit("stocks", "trades", rows([trade(1, 1)])).all()


class TestFrames:
    def test_frame_loses_stored_messages_and_is_reencoded(self, tmp_path: Path) -> None:
        """A frame keeps its new messages; its bytes (for the journal) decode to exactly those."""
        store(tmp_path, "trades", [trade(i, i) for i in range(1, 11)])
        store(tmp_path, "quotes", [], name="none.parquet")
        dedup = DedupFilter(60.0)
        dedup.seed(tmp_path, ["stocks"])
        quote = StockQuote(S="AAPL", t=stamp(9), bp=1.0, bs=1.0, ap=2.0, as_=1.0, recv_ns=7)
        new = msgspec.structs.replace(trade(11, 11), recv_ns=7)
        messages: list[Any] = [trade(9, 9), quote, new]
        frame = Frame("stocks", 7, messages, raw=b"original")
        filtered = dedup.filter_frame(frame)
        assert filtered is not None
        assert filtered.messages == [quote, new]
        decoded = FrameDecoder("stocks").decode(filtered.raw, 7)
        assert msgspec.to_builtins(decoded.messages) == msgspec.to_builtins(filtered.messages)

    def test_frame_of_duplicates_only_is_dropped(self, dedup: DedupFilter) -> None:
        """Nothing new and nothing to quarantine: nothing left to do."""
        assert dedup.filter_frame(Frame("stocks", 1, [trade(3, 3), trade(10, 10)])) is None

    def test_untouched_frame_is_the_same_object(self, dedup: DedupFilter) -> None:
        """A frame with nothing stored keeps its original bytes."""
        frame = Frame("stocks", 1, [trade(11, 11)], raw=b"raw")
        assert dedup.filter_frame(frame) is frame


class TestDerived:
    def test_stored_bar_keys_are_dropped_and_daily_bars_pass(self, tmp_path: Path) -> None:
        """Bars are checked by key only: an old-stamped new bar (a daily bar) is not dropped."""
        spec = bars_spec(())
        bar = {
            "symbol": "AAPL",
            "ts": BASE * 10**9,
            "bar_type": "time",
            "bar_size": "1m",
            "partial": True,
            "recv_ts": 1,
        }
        directory = tmp_path / "stocks" / "bars" / "date=2024-07-01"
        directory.mkdir(parents=True)
        newest = {**bar, "bar_type": "tick", "bar_size": "100", "ts": (BASE + 50) * 10**9}
        pq.write_table(spec.to_table([bar, newest]), directory / "part-a.parquet")
        dedup = DedupFilter(5.0, derived_window_seconds=60.0)
        dedup.seed(tmp_path, ["stocks"], {"bars"})
        admit = dedup.admission("stocks", spec)
        assert admit is not None
        daily = {**bar, "bar_size": "1d", "ts": (BASE - 52_200) * 10**9}
        closed = {**bar, "partial": False}
        assert admit([bar, daily, closed]) == [daily, closed]
        assert dedup.admission("stocks", table_spec("stocks", "trades", ())) is None


class TestRestart:
    def test_second_run_over_the_same_sim_stores_only_what_is_new(self, settings: Any) -> None:
        """The sim restarted from the same start: stored trades are dropped and counted."""
        stocks = settings.replace(ingest=dataclasses.replace(settings.ingest, streams=("stocks",)))
        first = SimSource(stocks, ("stocks",))
        anyio.run(functools.partial(run_daemon, stocks, first, duration=1.0))
        metrics = Metrics()
        second = SimSource(stocks, ("stocks",))
        result = anyio.run(
            functools.partial(run_daemon, stocks, second, duration=1.6, metrics=metrics)
        )
        root = settings.ingest.data_dir
        assert metrics.deduplicated.get("stocks", "trades") > 0
        assert result.duplicates == sum(metrics.deduplicated.values.values())
        emitted = max(first.emitted[("stocks", "t")], second.emitted[("stocks", "t")])
        assert count(root, "stocks", "trades") == emitted
        dupes = query(
            root,
            "stocks",
            "trades",
            "select count(*) from (select 1 from t group by symbol, trade_id having count(*) > 1)",
        )
        assert dupes == [(0,)]
