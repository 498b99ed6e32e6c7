"""Corrections and cancels restate open bars exactly; closed bars follow the documented policy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ingest.config import BarSpec, PipelineSettings
from ingest.corrections import apply_correction
from ingest.pipeline import SymbolPipeline
from ingest.trade_memory import PAGE, TradeMemory, trade_keys, trade_records
from streams.messages import CancelError, Correction, StockTrade
from tests.pipeline._data import Trades, load_esu4_trades

SETTINGS = PipelineSettings(bars=(BarSpec("time", 60.0, "1m"), BarSpec("tick", 50.0, "50")))
REAL = load_esu4_trades()  # 120 CME trades, 23:58:01 to 00:01:52 UTC: 13, 15, 68, 24 a minute
EXCHANGE = "X"
BAR_FIELDS = ("ts", "open", "high", "low", "close", "volume", "trade_count", "vwap")


def stock_trades(trades: Trades, first_id: int = 1) -> list[StockTrade]:
    return [
        StockTrade(S="ES", t="", i=first_id + k, x=EXCHANGE, p=float(p), s=float(s))
        for k, (p, s) in enumerate(zip(trades.price, trades.size, strict=True))
    ]


def feed(
    pipeline: SymbolPipeline, memory: TradeMemory, trades: Trades, lo: int, hi: int
) -> list[dict[str, Any]]:
    """Feed trades [lo, hi) as one batch, remembering them; the bars they closed."""
    part = Trades(trades.ts[lo:hi], trades.price[lo:hi], trades.size[lo:hi])
    keys = trade_keys(stock_trades(part, lo + 1))
    memory.remember(pipeline.trades_seen, trade_records(keys, part.ts, part.price, part.size))
    return pipeline.on_trades(part.ts, part.price, part.size).bars


def bars_of(trades: Trades) -> list[dict[str, Any]]:
    """Every bar (closed, then the open ones flushed) of a fresh pipeline fed `trades`."""
    pipeline = SymbolPipeline("ES", SETTINGS)
    return pipeline.on_trades(trades.ts, trades.price, trades.size).bars + pipeline.flush().bars


def same_bars(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [(b["bar_type"], b["ts"]) for b in got] == [(b["bar_type"], b["ts"]) for b in want]
    for g, w in zip(got, want, strict=True):
        for name in BAR_FIELDS:
            assert g[name] == pytest.approx(w[name], rel=1e-12), (g["bar_type"], g["ts"], name)


def correction(index: int, price: float, size: float) -> Correction:
    """A correction of REAL trade `index` (id index + 1)."""
    return Correction(
        S="ES",
        t="",
        x=EXCHANGE,
        oi=index + 1,
        op=float(REAL.price[index]),
        os=float(REAL.size[index]),
        ci=10_000 + index,
        cp=price,
        cs=size,
    )


def cancel(index: int, trade_id: int | None = None) -> CancelError:
    return CancelError(
        S="ES",
        t="",
        i=index + 1 if trade_id is None else trade_id,
        x=EXCHANGE,
        p=float(REAL.price[index]),
        s=float(REAL.size[index]),
        a="C",
    )


def fixed(trades: Trades, index: int, price: float | None, size: float | None) -> Trades:
    """`trades` with trade `index` corrected, or removed when `price` is None."""
    if price is None or size is None:
        keep = np.arange(len(trades.ts)) != index
        return Trades(trades.ts[keep], trades.price[keep], trades.size[keep])
    p, s = trades.price.copy(), trades.size.copy()
    p[index], s[index] = price, size
    return Trades(trades.ts, p, s)


class TestOpenBars:
    def test_correction_restates_every_open_bar_holding_the_trade(self) -> None:
        """A corrected price and size in the open minute and tick bar: as if sent corrected."""
        pipeline, memory = SymbolPipeline("ES", SETTINGS), TradeMemory(1000)
        closed = feed(pipeline, memory, REAL, 0, 40)
        # Trade 35 is in minute 00:00 (open) and in the second tick bar (open).
        applied = apply_correction(pipeline, memory, correction(35, 5531.0, 7.0))
        assert applied == "open_bar"
        closed += feed(pipeline, memory, REAL, 40, 120)
        got = closed + pipeline.flush().bars
        same_bars(got, bars_of(fixed(REAL, 35, 5531.0, 7.0)))
        fixed_bars = [b for b in got if b["corrections"]]
        assert sorted((b["bar_type"], b["corrections"]) for b in fixed_bars) == [
            ("tick", 1),
            ("time", 1),
        ]

    def test_cancel_removes_the_trade_from_open_bars(self) -> None:
        """A cancelled trade leaves the open bars as if it had never traded."""
        pipeline, memory = SymbolPipeline("ES", SETTINGS), TradeMemory(1000)
        closed = feed(pipeline, memory, REAL, 0, 105)
        # Trade 101 is in minute 00:01 and in the third tick bar, both open.
        assert apply_correction(pipeline, memory, cancel(101)) == "open_bar"
        closed += feed(pipeline, memory, REAL, 105, 120)
        same_bars(closed + pipeline.flush().bars, bars_of(fixed(REAL, 101, None, None)))

    def test_cancelling_the_high_lowers_it(self) -> None:
        """When the cancelled trade was the bar's high, the high is the next highest trade."""
        pipeline, memory = SymbolPipeline("ES", SETTINGS), TradeMemory(1000)
        feed(pipeline, memory, REAL, 28, 60)  # inside minute 00:00
        minute = slice(28, 60)
        top = 28 + int(np.argmax(REAL.price[minute]))
        apply_correction(pipeline, memory, cancel(top))
        (time_bar,) = [b for b in pipeline.flush().bars if b["bar_type"] == "time"]
        rest = np.delete(REAL.price[minute], top - 28)
        assert time_bar["high"] == rest.max()

    def test_cancelling_every_trade_of_the_open_bar_drops_it(self) -> None:
        """With all its trades cancelled the open minute disappears; the next trade reopens it."""
        settings = PipelineSettings(bars=(BarSpec("time", 60.0, "1m"),))
        pipeline, memory = SymbolPipeline("ES", settings), TradeMemory(1000)
        feed(pipeline, memory, REAL, 0, 2)
        for index in (0, 1):
            assert apply_correction(pipeline, memory, cancel(index)) == "open_bar"
        assert pipeline.flush().bars == []

    def test_session_vwap_follows_the_correction(self) -> None:
        """The session VWAP of later bars includes the corrected trade's new value."""
        pipeline, memory = SymbolPipeline("ES", SETTINGS), TradeMemory(1000)
        closed = feed(pipeline, memory, REAL, 28, 40)  # all of 2024-07-02
        apply_correction(pipeline, memory, correction(30, 5600.0, 100.0))
        closed += feed(pipeline, memory, REAL, 40, 120)
        got = closed + pipeline.flush().bars
        want = bars_of(fixed(Trades(REAL.ts[28:], REAL.price[28:], REAL.size[28:]), 2, 5600, 100))
        assert [b["session_vwap"] for b in got][-1] == pytest.approx(want[-1]["session_vwap"])


class TestPolicy:
    def test_closed_bar_is_left_as_written(self) -> None:
        """A trade whose bars all closed: nothing changes, the fix says `closed_bar`."""
        pipeline, memory = SymbolPipeline("ES", SETTINGS), TradeMemory(1000)
        closed = feed(pipeline, memory, REAL, 0, 120)
        assert apply_correction(pipeline, memory, correction(0, 1.0, 1.0)) == "closed_bar"
        same_bars(closed + pipeline.flush().bars, bars_of(REAL))

    def test_closed_time_bar_but_open_tick_bar_is_partial(self) -> None:
        """The minute of the trade closed, its tick bar is open: only the tick bar changes."""
        pipeline, memory = SymbolPipeline("ES", SETTINGS), TradeMemory(1000)
        feed(pipeline, memory, REAL, 0, 20)  # minute 23:59 opened at trade 13
        assert apply_correction(pipeline, memory, cancel(5)) == "partial"
        bars = {b["bar_type"]: b for b in pipeline.flush().bars}
        assert bars["tick"]["trade_count"] == 19
        assert bars["time"]["trade_count"] == 7

    def test_unknown_trade_is_not_found(self) -> None:
        """A trade the symbol never saw (or forgot) changes nothing."""
        pipeline, memory = SymbolPipeline("ES", SETTINGS), TradeMemory(1000)
        feed(pipeline, memory, REAL, 0, 10)
        assert apply_correction(pipeline, memory, cancel(3, trade_id=999)) == "not_found"
        other = cancel(3)
        other.x = "Q"  # same id on another exchange is another trade
        assert apply_correction(pipeline, memory, other) == "not_found"

    def test_a_trade_is_cancelled_once(self) -> None:
        """A repeated cancel of the same trade does not remove it twice."""
        pipeline, memory = SymbolPipeline("ES", SETTINGS), TradeMemory(1000)
        feed(pipeline, memory, REAL, 0, 10)
        assert apply_correction(pipeline, memory, cancel(3)) == "open_bar"
        assert apply_correction(pipeline, memory, cancel(3)) == "not_found"

    def test_open_bar_older_than_the_window_is_not_restated(self) -> None:
        """A tiny window forgets the open bar's first trades: that bar is not recomputed."""
        pipeline, memory = SymbolPipeline("ES", SETTINGS), TradeMemory(5)
        for lo in range(28, 60, 4):
            feed(pipeline, memory, REAL, lo, lo + 4)  # the minute 00:00 holds all of them
        assert apply_correction(pipeline, memory, cancel(58)) == "closed_bar"

    def test_later_correction_of_a_corrected_trade_finds_it(self) -> None:
        """A correction names the corrected id; correcting that again still finds the trade."""
        pipeline, memory = SymbolPipeline("ES", SETTINGS), TradeMemory(1000)
        feed(pipeline, memory, REAL, 0, 10)
        apply_correction(pipeline, memory, correction(4, 5530.0, 3.0))
        again = correction(4, 5529.0, 2.0)
        again.oi = 10_004
        assert apply_correction(pipeline, memory, again) == "open_bar"
        closed = pipeline.flush().bars
        same_bars(
            closed,
            bars_of(fixed(Trades(REAL.ts[:10], REAL.price[:10], REAL.size[:10]), 4, 5529.0, 2.0)),
        )


class TestMemory:
    def test_keeps_the_last_window_of_trades(self) -> None:
        """After many batches the memory holds the last `window` trades, numbered by arrival."""
        pipeline, memory = SymbolPipeline("ES", SETTINGS), TradeMemory(30)
        for lo in range(0, 120, 7):
            feed(pipeline, memory, REAL, lo, min(lo + 7, 120))
        recent = memory.recent()
        assert recent.seq.tolist() == list(range(90, 120))
        assert recent.oldest == 90
        assert recent.price.tolist() == REAL.price[90:].tolist()
        assert memory.find(90, EXCHANGE) is None  # id 90 is trade 89: forgotten
        assert memory.find(91, EXCHANGE) is not None

    def test_a_batch_larger_than_the_window_keeps_its_last_trades(self) -> None:
        """Of one batch bigger than the window, its last `window` trades are remembered."""
        pipeline, memory = SymbolPipeline("ES", SETTINGS), TradeMemory(10)
        feed(pipeline, memory, REAL, 0, 100)
        assert len(memory.recent().seq) == 10
        assert memory.recent().oldest == 90

    def test_never_holds_room_for_more_than_the_window(self) -> None:
        """Pages of 64 trades, taken as the ring reaches them, up to the window's (a ring)."""
        pipeline, memory = SymbolPipeline("ES", SETTINGS), TradeMemory(100)
        rooms = []
        for lo in range(0, 120, 7):
            feed(pipeline, memory, REAL, lo, min(lo + 7, 120))
            rooms.append(memory.capacity)
        assert rooms[0] == PAGE
        assert max(rooms) == rooms[-1] == 2 * PAGE  # 100 trades, rounded up to whole pages
        assert memory.recent().seq.tolist() == list(range(20, 120))
        assert memory.recent().price.tolist() == REAL.price[20:].tolist()

    def test_a_trade_in_a_wrapped_slot_is_corrected_in_place(self) -> None:
        """After the ring wraps, a correction still finds its trade and restates the open bars."""
        pipeline, memory = SymbolPipeline("ES", SETTINGS), TradeMemory(30)
        for lo in range(0, 120, 7):
            feed(pipeline, memory, REAL, lo, min(lo + 7, 120))
        assert memory.capacity == PAGE
        # Trade 105: the open minute (00:01, trades 96-119) and the open tick bar (100-119).
        assert apply_correction(pipeline, memory, correction(105, 5531.0, 4.0)) == "open_bar"
        assert apply_correction(pipeline, memory, cancel(101)) == "open_bar"
        opened = pipeline.flush().bars
        want = bars_of(fixed(fixed(REAL, 105, 5531.0, 4.0), 101, None, None))
        keys = {(b["bar_type"], b["ts"]) for b in opened}
        same_bars(opened, [b for b in want if (b["bar_type"], b["ts"]) in keys])
        assert 101 not in memory.recent().seq.tolist()

    @pytest.mark.parametrize("window", [1, 5, 64, 100, 300])
    def test_matches_a_plain_list_of_the_last_window_trades(self, window: int) -> None:
        """Random batches, cancels and corrections: the ring agrees with a naive model."""
        rng = np.random.default_rng(window)
        memory = TradeMemory(window)
        model: list[list[float]] = []  # [seq, id, price, alive] of every trade, in arrival order
        seq = 0
        for _ in range(200):
            n = int(rng.integers(1, 2 * window + 2))
            ids = np.arange(seq + 1, seq + n + 1, dtype=np.int64)
            price = rng.uniform(1, 2, n)
            trades = [StockTrade(S="ES", t="", i=int(i), x=EXCHANGE, p=1.0, s=1.0) for i in ids]
            memory.remember(seq, trade_records(trade_keys(trades), ids * 10, price, np.ones(n)))
            model += [[seq + k, float(ids[k]), float(price[k]), 1.0] for k in range(n)]
            seq += n
            kept = model[-window:]
            target = kept[int(rng.integers(0, len(kept)))]
            position = memory.find(int(target[1]), EXCHANGE)
            if target[3]:
                assert position is not None
                assert memory.seq_of(position) == target[0]
                assert memory.time_of(position) == target[1] * 10
                if rng.random() < 0.5:
                    memory.cancel(position)
                    target[3] = 0.0
                else:
                    memory.correct(position, int(target[1]), 3.0, 1.0)
                    target[2] = 3.0
            else:
                assert position is None
            recent = memory.recent()
            alive = [t for t in model[-window:] if t[3]]
            assert recent.oldest == model[-window:][0][0]
            assert recent.seq.tolist() == [t[0] for t in alive]
            assert recent.price.tolist() == [t[2] for t in alive]
            assert memory.capacity <= -(-window // PAGE) * PAGE
