"""Many symbols' small batches in one vector step: the anomaly check, and bars that stay open.

At a trickle a flush brings each of hundreds of symbols a trade or two, and one symbol's
pipeline call costs about the same whatever its size (~20 us warm, more with its state out of
cache): the latency of a paced run is that fixed cost times the symbols of a flush.
`take_steady` takes a flush's batches that stay in their session (no new UTC day, no trade of an
earlier one), or that begin one on a symbol's first trade. Their trades are checked for
anomalies together, with a few numpy calls over every symbol's window; a trade with fewer than
`window` prices before it only fills its window, as in `AnomalyDetector.detect`, so the symbols
starting up (20 trades each by default) are taken too instead of each paying a call in its task.
Their sessions move on from a summary of their batch, and so does every open bar the batch
closes nothing of, in the arrays of the `SteadyBook` that holds their state
(`ingest.pipeline.book`), a few numpy calls a series for all of them. Most bars a batch opens or
closes are done in those arrays too (`ingest.pipeline.closes`); the few series left (a late
trade, two fills) go through their own bar builders (`Steady.close`, which the caller runs). The
others are left as they were, for `SymbolPipeline.on_trades`.

Both ways give the same state and the same rows, bit for bit: the running sums are added one
trade after the other from the session's sums (`np.add.accumulate` along each symbol's row),
the price range is numpy's, and the anomaly windows are summed by the very routine `detect` uses
(`AnomalyDetector.check_windows`). `tests/pipeline/test_steady.py` feeds random workloads both
ways and compares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ingest.pipeline.bars import Bar, Slices, TradeSlice
from ingest.pipeline.closes import close_in_arrays

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

    from ingest.pipeline.book import SteadyBook
    from ingest.pipeline.symbol import Row, SymbolPipeline

__all__ = ["Steady", "take_steady"]

_DAY_NS = 86_400 * 1_000_000_000


@dataclass(slots=True)
class _Closes:
    """What `Steady.close` runs a closing batch's bar builders from."""

    book: SteadyBook
    pipelines: Sequence[SymbolPipeline]
    slots: npt.NDArray[np.intp]
    by_builders: dict[int, list[int]]
    """Per closing pipeline, the series its batch goes through the builder of (their open bar
    did not take it, `SteadyBook.absorbs`, and `close_in_arrays` did not do it)."""
    counted: dict[int, list[tuple[int, Bar]]]
    """Per pipeline, the bars `close_in_arrays` closed."""
    starts: npt.NDArray[np.intp]
    ts: npt.NDArray[np.int64]
    price: npt.NDArray[np.float64]
    size: npt.NDArray[np.float64]
    cum_v: npt.NDArray[np.float64]
    """Per pipeline, the session's running volume before each trade of its batch, then after."""
    cum_pv: npt.NDArray[np.float64]
    slices: Slices
    vwap: npt.NDArray[np.float64]


@dataclass(slots=True)
class Steady:
    """What `take_steady` did with each pipeline's batch."""

    taken: list[bool]
    """Per pipeline: its batch was taken (else it is untouched, for `on_trades`)."""
    closing: list[int] = field(default_factory=list)
    """Pipelines taken (by position) whose batch closes a bar or has a late trade: its anomaly
    check is done and its session moved on, its closing bars are not: the caller runs `close`
    for each before anything else reaches that pipeline."""
    anomalies: dict[int, list[Row]] = field(default_factory=dict)
    """Per pipeline taken (by position), the anomaly rows of its batch, when it has any."""
    first_seq: npt.NDArray[np.int64] | None = None
    """Per pipeline held, the arrival sequence number of its batch's first trade (what
    `SymbolPipeline.trades_seen` was before it); None when none is held."""
    _closes: _Closes | None = None

    def close(self, k: int) -> list[Row]:
        """The bars closed by the batch of pipeline `k` (one of `closing`), with indicators.

        Those `close_in_arrays` closed, and those of the series it left to their builders (whose
        open bar did not take the batch), run here. If it raises, the pipeline is left half-way:
        the caller replaces it.
        """
        c = self._closes
        assert c is not None, "close only what is closing"
        assert self.first_seq is not None
        pipeline = c.pipelines[k]
        counted = c.counted.get(k, [])
        series = c.by_builders[k]
        if not series:
            return pipeline.bar_rows(counted)
        start, m = int(c.starts[k]), int(c.slices.counts[k])
        end = start + m
        slot = int(c.slots[k])
        ev, epv = float(c.book.ev[slot]), float(c.book.epv[slot])
        vwap = float(c.vwap[k])
        trades = TradeSlice(
            ts=c.ts[start:end],
            price=c.price[start:end],
            size=c.size[start:end],
            cv=c.cum_v[k, : m + 1].tolist(),
            cpv=c.cum_pv[k, : m + 1].tolist(),
            # Trades of earlier days arrived this session: their sums, which no steady trade
            # adds to (`SymbolPipeline._sums_scalar`).
            ev=[ev] * (m + 1) if ev else None,
            epv=[epv] * (m + 1) if ev else None,
            tmin=int(c.slices.tmin[k]),
            tmax=int(c.slices.tmax[k]),
            pmin=float(c.slices.low[k]),
            pmax=float(c.slices.high[k]),
            offset=int(self.first_seq[k]),
            last_price=float(c.slices.last[k]),
            sv_end=None if vwap != vwap else vwap,  # NaN: no volume, no VWAP
        )
        c.book.lend(slot, series, pipeline)
        rows = pipeline.close_bars(trades, series, counted)
        c.book.keep(slot, series, pipeline)
        return rows


def take_steady(
    book: SteadyBook,
    pipelines: Sequence[SymbolPipeline],
    ts: npt.NDArray[np.int64],
    price: npt.NDArray[np.float64],
    size: npt.NDArray[np.float64],
    counts: npt.NDArray[np.intp],
) -> Steady:
    """Take every batch that stays in its session, or begins one on a symbol's first trade.

    The batches are consecutive in `ts`, `price` and `size`, `counts[k]` trades (at least one)
    for `pipelines[k]`, each in arrival order. All pipelines share one configuration and are
    held by `book` alone (which holds those it can). No state changes until everything is
    computed: if this raises, every pipeline is as it was. Batches listed in `Steady.closing`
    are taken but for their closing bars: the caller must run `Steady.close` for each before
    anything else reaches that pipeline.
    """
    k_all = len(pipelines)
    starts = np.cumsum(counts) - counts
    ends = starts + counts
    tmin = np.minimum.reduceat(ts, starts)
    tmax = np.maximum.reduceat(ts, starts)
    first_day, last_day = tmin // _DAY_NS, tmax // _DAY_NS
    first_days = np.where(first_day == last_day, first_day, -1)
    slots = book.hold(pipelines, first_days)
    held = slots >= 0
    out = Steady([False] * k_all)
    if not held.any():
        return out
    at = np.where(held, slots, slots.max())  # a held slot for every row; masked below
    out.first_seq = first_seq = book.seq[at]
    days = book.day[at]
    steady = held & (first_day == days) & (last_day == days)

    # The session's running sums, one trade after the other along each symbol's row; the
    # padding after a short batch adds zeros, which change no sum.
    rows = np.repeat(np.arange(k_all), counts)
    cols = np.arange(len(ts)) - np.repeat(starts, counts)
    width = int(counts.max()) + 1
    volume = np.zeros((k_all, width))
    notional = np.zeros((k_all, width))
    volume[:, 0] = book.cv[at]
    notional[:, 0] = book.cpv[at]
    volume[rows, cols + 1] = size
    notional[rows, cols + 1] = price * size
    cum_v = np.add.accumulate(volume, axis=1)
    cum_pv = np.add.accumulate(notional, axis=1)
    end_v = cum_v[:, -1]
    end_pv = cum_pv[:, -1]

    slices = Slices(
        tmin,
        tmax,
        counts,
        end_v,
        end_pv,
        high=np.maximum.reduceat(price, starts),
        low=np.minimum.reduceat(price, starts),
        last=price[ends - 1],
    )
    takes = book.absorbs(at, slices)
    vwap = book.session_vwap(at, slices)
    counted = close_in_arrays(
        book, at, steady, takes, first_seq, cum_v, cum_pv, rows, cols, ts, price, size, slices,
        vwap,
    )  # fmt: skip
    by_builders = ~takes & ~counted.handled
    out.taken = steady.tolist()
    chosen = np.flatnonzero(steady)
    if not len(chosen):
        return out

    # Each chosen symbol's row: its last `window` prices, then its batch's.
    detector = book.detector
    window = detector.window
    mine = steady[rows]
    rank = np.cumsum(steady) - 1
    trade_row = rank[rows[mine]]
    trade_col = cols[mine]
    history = np.empty((len(chosen), window + width - 1))
    history[:, :window] = book.recent[at[chosen]]
    history[trade_row, window + trade_col] = price[mine]
    # Row r, column c: the `window` prices before trade c of row r (a sliding-window view of
    # `history`; indexing it copies whole windows, C-contiguous, as `check_windows` wants them).
    step = history.itemsize
    shape = (len(chosen), width, window)
    windows = np.ndarray(shape, history.dtype, history, strides=(history.strides[0], step, step))
    # A trade is checked once `window` prices precede it; before, it only fills the window.
    filled = book.filled[at[chosen]]
    current, stamps = price[mine], ts[mine]
    checked = filled[trade_row] + trade_col >= window
    if not checked.all():
        trade_row, trade_col = trade_row[checked], trade_col[checked]
        current, stamps = current[checked], stamps[checked]
    hits = detector.check_windows(windows[trade_row, trade_col], current)
    kept = windows[np.arange(len(chosen)), counts[chosen]]
    if hits:
        owner = chosen[trade_row]
        for hit in hits:
            k = int(owner[hit.index])
            row = pipelines[k].anomaly_row(int(stamps[hit.index]), hit)
            out.anomalies.setdefault(k, []).append(row)

    book.recent[at[chosen]] = kept
    book.filled[at[chosen]] = np.minimum(filled + counts[chosen], window)
    book.move_on(at[chosen], slices.take(chosen), vwap[chosen], takes[:, chosen])
    counted.apply(book)
    closing = steady & by_builders.any(axis=0)
    closing[list(counted.bars)] = True
    out.closing = np.flatnonzero(closing).tolist()
    if out.closing:
        flags = by_builders[:, out.closing].T.tolist()  # one call, not one a pipeline
        series_of = {
            k: [i for i, on in enumerate(f) if on] for k, f in zip(out.closing, flags, strict=True)
        }
        out._closes = _Closes(
            book, pipelines, at, series_of, counted.bars, starts, ts, price, size, cum_v,
            cum_pv, slices, vwap,
        )  # fmt: skip
    return out
