"""The router's flush grows with its symbol tasks; small batches of idle symbols go together."""

from __future__ import annotations

import sys
import time
from functools import partial
from itertools import chain
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pyarrow as pa
import pytest

from ingest import router as router_module
from ingest.config import settings_from_mapping
from ingest.metrics import Metrics
from ingest.pipeline import SymbolPipeline, indicator_columns
from ingest.pipeline.steady import Steady, take_steady
from ingest.router import BATCH_MESSAGES, BATCH_PER_SYMBOL, StreamRouter, pending_limit
from ingest.trade_memory import TradeMemory, TradeStore
from storage.parquet import open_dataset
from storage.quarantine import Quarantine
from storage.schemas import MarketConverter
from streams.base import Frame
from streams.messages import AnyMessage, Correction, StockTrade
from tests.dataset import query

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("symbols", [10, 4096, 5000])
async def test_the_flush_scale_follows_the_symbol_tasks(tmp_path: Path, symbols: int) -> None:
    """1 while `BATCH_MESSAGES` covers every task's share; beyond, in proportion to the tasks."""
    names = [f"S{n:05}" for n in range(symbols)]
    settings = settings_from_mapping(
        {
            "ingest": {"data_dir": str(tmp_path), "streams": ["stocks"]},
            "streams": {"stocks": {"symbols": names}},
            "server": {"listen": ""},
        }
    )
    async with open_dataset(
        tmp_path, settings.storage, writer_id="t", metadata={}, indicator_columns=()
    ) as dataset:
        router = StreamRouter("stocks", settings, dataset, Quarantine(tmp_path, "t"), Metrics())
        async with anyio.create_task_group() as group:
            await group.start(router.run)
            assert router.symbol_tasks == symbols
            expected = max(1.0, symbols * BATCH_PER_SYMBOL / BATCH_MESSAGES)
            assert router.flush_scale() == pytest.approx(expected)
            assert pending_limit(symbols) == pytest.approx(BATCH_MESSAGES * expected)
            router.close()


START_NS = 1_719_844_200_000_000_000  # 2024-07-01T14:30:00Z


def _stamp(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


SMALL_BARS = ["time:1s", "tick:7", "volume:20", "dollar:1500"]
"""Bars that close every few trades of the trickle (stamped 25 ms apart)."""


def _trickle(step_ns: int) -> list[list[AnyMessage]]:
    """One trade a frame over two symbols, `step_ns` apart, a price spike, then a correction."""
    frames: list[list[AnyMessage]] = []
    prices = {"AAA": 100.0, "BBB": 50.0}
    for i in range(160):
        symbol = "AAA" if i % 2 else "BBB"
        prices[symbol] += 0.01 * ((i * 7) % 5 - 2)
        price = prices[symbol] * (1.3 if i == 121 else 1.0)
        stamp = _stamp(START_NS + i * step_ns)
        frames.append([StockTrade(S=symbol, t=stamp, i=i, x="V", p=price, s=1.0 + i % 3)])
    fixed = Correction(
        S="AAA", t=_stamp(START_NS + 170 * step_ns), x="V", oi=101, op=0.0, os=0.0, ci=999,
        cp=101.0, cs=4.0,
    )  # fmt: skip
    return [*frames, [fixed]]


def _bursts(step_ns: int) -> list[list[AnyMessage]]:
    """The trickle's trades six a frame, and now and then 70 of a third symbol besides.

    A flush then holds several symbols' runs, the third's too long for the steady step.
    """
    *trickle, fixed = _trickle(step_ns)
    frames = [list(chain(*trickle[i : i + 6])) for i in range(0, len(trickle), 6)]
    for k in range(0, len(frames), 5):
        stamp = frames[k][0].t  # type: ignore[union-attr]
        busy = [StockTrade(S="CCC", t=stamp, i=j, x="V", p=10.0 + j % 7, s=1.0) for j in range(70)]
        frames[k] = busy + frames[k]
    return [*frames, fixed]


async def _run_trickle(root: Path, bars: list[str] | None, *, bursts: bool = False) -> StreamRouter:
    config: dict[str, Any] = {
        "ingest": {"data_dir": str(root), "streams": ["stocks"]},
        "streams": {"stocks": {"symbols": ["AAA", "BBB", "CCC"] if bursts else ["AAA", "BBB"]}},
        "server": {"listen": ""},
    }
    if bars is not None:
        config["pipeline"] = {"bars": bars}
    settings = settings_from_mapping(config)
    async with open_dataset(
        root,
        settings.storage,
        writer_id="t",
        metadata={},
        indicator_columns=indicator_columns(settings.pipeline),
    ) as dataset:
        router = StreamRouter("stocks", settings, dataset, Quarantine(root, "t"), Metrics())
        async with anyio.create_task_group() as group:
            await group.start(router.run)
            frames = _bursts if bursts else _trickle
            for messages in frames(1_000_000 if bars is None else 25_000_000):
                recv_ns = time.time_ns()
                for message in messages:
                    message.recv_ns = recv_ns
                await router.deliver(Frame("stocks", recv_ns, messages))
                for _ in range(8):  # the flusher and the symbol task take their turns
                    await anyio.lowlevel.checkpoint()
            router.close()
    return router


def _accounts(router: StreamRouter) -> dict[str, Any]:
    metrics = router._metrics
    return {
        "status": {s: (st.last_event_ns, st.seen) for s, st in router.symbols.items()},
        "messages": metrics.messages.values,
        "lags": sum(metrics.latency.counts[("stocks",)]),
        "batches": sum(metrics.pipeline_latency.counts[("stocks",)]),
        "remembered": {s: _remembered(m) for s, m in router._memories.items()},
    }


def _remembered(memory: TradeMemory | None) -> tuple[list[int], list[int], list[float]]:
    """A symbol's trade memory: the positions, times and prices of its trades."""
    assert memory is not None
    recent = memory.recent()
    return recent.seq.tolist(), recent.ts.tolist(), recent.price.tolist()


BAR_COLUMNS = (
    "symbol, bar_type, ts, open, high, low, close, volume, trade_count, vwap, session_vwap, "
    "corrections, partial"
)


@pytest.mark.parametrize("bars", [None, SMALL_BARS], ids=["default bars", "small bars"])
def test_trickled_trades_take_the_steady_path_with_the_same_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bars: list[str] | None
) -> None:
    """Batches taken together leave what their symbol tasks would: rows, counts, corrections."""
    taken: list[int] = []
    closing: list[int] = []

    def counting(*args: Any) -> Steady:
        steady = take_steady(*args)
        taken.append(sum(steady.taken))
        closing.append(len(steady.closing))
        return steady

    monkeypatch.setattr(router_module, "take_steady", counting)
    steady = anyio.run(_run_trickle, tmp_path / "steady", bars)
    monkeypatch.setattr(router_module, "STEADY_MAX", 0)  # nothing offered: every batch a task's
    alone = anyio.run(_run_trickle, tmp_path / "alone", bars)
    # Every batch is taken, a symbol's first one too (it begins the session in the book).
    assert sum(taken) == 160
    assert len(taken) < 170  # and none was offered in the second run
    if bars is None:  # nothing closes: each symbol's first batch opens its bars, by builders
        assert sum(closing) == 2
    else:  # closing bars in the flush, by the symbol's own builders
        assert sum(closing) > 30

    for router in (steady, alone):
        assert {s: state.messages for s, state in router.symbols.items()} == {
            "AAA": 81,
            "BBB": 80,
        }
        assert router.oldest_inflight_ns() is None
    # The steady step's accounting, done for all its symbols at once, is the tasks': what
    # `/status` shows, the message counts, one lag observation a trade and one latency
    # observation a batch.
    assert _accounts(steady) == _accounts(alone)
    for table, columns, order in (
        ("bars", BAR_COLUMNS, "symbol, bar_type, ts"),
        ("anomalies", "symbol, ts, price, zscore", "symbol, ts"),
        ("corrections", "symbol, applied", "symbol"),
    ):
        sql = f"select {columns} from t order by {order}"
        got = query(tmp_path / "steady", "stocks", table, sql)
        assert got == query(tmp_path / "alone", "stocks", table, sql), table
        assert got, table
    if bars is None:
        # The corrected trade was remembered on the steady path: every open bar was restated.
        assert query(tmp_path / "steady", "stocks", "corrections", "select applied from t") == [
            ("open_bar",)
        ]
    else:
        closed = query(tmp_path / "steady", "stocks", "bars", "select count(*) from t")
        assert closed[0][0] > 40


@pytest.mark.parametrize("one_by_one", [0, 8], ids=["one scatter", "one by one"])
def test_a_flush_of_several_symbols_remembers_the_steady_ones_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_by_one: int
) -> None:
    """Runs taken from a flush of several symbols go into their memories together.

    In one scatter, or one by one when they are few (`REMEMBER_ONE_BY_ONE`). A third symbol's
    long runs go to its task: the steady step remembers only what it took, and every memory
    ends as the tasks alone leave it.
    """
    scatters: list[int] = []
    remember_runs = TradeStore.remember_runs

    def counting(self: TradeStore, slots: Any, *args: Any) -> None:
        scatters.append(len(slots))
        remember_runs(self, slots, *args)

    monkeypatch.setattr(TradeStore, "remember_runs", counting)
    monkeypatch.setattr(router_module, "REMEMBER_ONE_BY_ONE", one_by_one)
    steady = anyio.run(partial(_run_trickle, bursts=True), tmp_path / "steady", SMALL_BARS)
    if one_by_one:
        assert scatters == []
    else:
        assert max(scatters) >= 2
    monkeypatch.setattr(router_module, "STEADY_MAX", 0)
    alone = anyio.run(partial(_run_trickle, bursts=True), tmp_path / "alone", SMALL_BARS)
    assert _accounts(steady) == _accounts(alone)
    assert len(_accounts(steady)["remembered"]["CCC"][0]) == 70 * 6
    assert {s: state.messages for s, state in steady.symbols.items()} == {
        "AAA": 81,
        "BBB": 80,
        "CCC": 420,
    }


def test_the_steady_steps_trades_are_in_flight_until_their_rows_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Journal deletion and back-fill settling see the steady step's trades while it writes."""
    seen: list[tuple[int | None, int]] = []
    emit_many = StreamRouter._emit_many

    async def watching(self: StreamRouter, outputs: list[tuple[Any, int]]) -> None:
        if sys._getframe(1).f_code.co_name == "_flush" and outputs:
            seen.append((self.oldest_inflight_ns(), min(recv for _, recv in outputs)))
        await emit_many(self, outputs)

    monkeypatch.setattr(StreamRouter, "_emit_many", watching)
    router = anyio.run(_run_trickle, tmp_path, SMALL_BARS)
    assert len(seen) > 30
    for oldest, received in seen:
        assert oldest is not None
        assert oldest <= received
    assert router.oldest_inflight_ns() is None


def test_a_symbol_failing_in_the_steady_step_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bar computation that raises in the flush is that symbol's failure, as in its task."""
    anyio.run(_run_trickle, tmp_path / "clean", SMALL_BARS)
    failed: list[int] = []

    def failing(method: Callable[..., Any]) -> Callable[..., Any]:
        def fail(self: SymbolPipeline, *args: Any) -> Any:
            if self.symbol == "AAA" and self.trades_seen >= 40 and not failed:
                failed.append(self.trades_seen)
                raise RuntimeError("injected")
            return method(self, *args)

        return fail

    # What the flush's steady step makes the rows of closed bars with (`Steady.close`).
    monkeypatch.setattr(SymbolPipeline, "close_bars", failing(SymbolPipeline.close_bars))
    monkeypatch.setattr(SymbolPipeline, "bar_rows", failing(SymbolPipeline.bar_rows))
    router = anyio.run(_run_trickle, tmp_path / "failing", SMALL_BARS)
    assert failed
    assert {s: state.failures for s, state in router.symbols.items()} == {"AAA": 1, "BBB": 0}
    assert {s: state.messages for s, state in router.symbols.items()} == {"AAA": 81, "BBB": 80}
    sql = f"select {BAR_COLUMNS} from t where symbol = 'BBB' order by bar_type, ts"
    assert query(tmp_path / "failing", "stocks", "bars", sql) == query(
        tmp_path / "clean", "stocks", "bars", sql
    )
    # AAA goes on from a fresh pipeline: bars close after the failure too.
    later = START_NS + 2 * failed[0] * 25_000_000 + 500_000_000
    sql = f"select count(*) from t where symbol = 'AAA' and not partial and epoch_ns(ts) > {later}"
    assert query(tmp_path / "failing", "stocks", "bars", sql)[0][0] > 3


def test_steady_trades_are_stored_when_the_bulk_table_does_not_convert(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trades the steady step took are stored even if the bulk table then fails to convert.

    The steady step runs before the flush's bulk table is built; the trades it took are then
    written record by record, as their tasks would write them.
    """
    anyio.run(_run_trickle, tmp_path / "clean", SMALL_BARS)
    taken: list[int] = []

    def counting(*args: Any) -> Steady:
        steady = take_steady(*args)
        taken.append(sum(steady.taken))
        return steady

    with_columns = MarketConverter.with_columns

    def failing_in_bulk(self: MarketConverter, rs: Any, known: Any) -> Any:
        if known:  # the router's bulk build; a task's own conversion gathers every column
            raise pa.ArrowInvalid("injected")
        return with_columns(self, rs, known)

    monkeypatch.setattr(router_module, "take_steady", counting)
    monkeypatch.setattr(MarketConverter, "with_columns", failing_in_bulk)
    router = anyio.run(_run_trickle, tmp_path / "failing", SMALL_BARS)
    assert sum(taken) == 160
    assert router.oldest_inflight_ns() is None
    sql = "select symbol, ts, trade_id, price, size, exchange from t order by symbol, ts"
    stored = query(tmp_path / "failing", "stocks", "trades", sql)
    assert len(stored) == 160
    assert stored == query(tmp_path / "clean", "stocks", "trades", sql)
    for table in ("bars", "anomalies"):
        sql = "select * exclude (recv_ts) from t order by all"
        got = query(tmp_path / "failing", "stocks", table, sql)
        assert got == query(tmp_path / "clean", "stocks", table, sql)
