"""Bars that open or close in the steady step, done in arrays for every symbol at once.

At 100k trades/s over 200 symbols a flush's batches of a few trades each close ~20 bars, nine
in ten of them count bars (every ~100 trades a series by default), and at each minute of the
trades' clock every symbol closes its one-minute bar within a few flushes. A batch that closed
a bar went through its symbol's builders (`Steady.close`): its open bar lent out of the book, a
`TradeSlice` built, the builder's loop, the bar read back, ~35 us a batch in the daemon. Yet
what a bar does with a small batch is nearly always one of three things:

* a tick, volume or dollar series has no bar open (the last batch filled it on its last
  trade), and the batch opens one and fills it only part way;
* its open bar fills on trade `j` of the batch, and the trades after `j` open the next bar,
  again only part way;
* a time series' open bar gets the batch's first `j` trades, and the rest are all of one later
  bucket: they close it and open that bucket's bar.

These are done here for every (series, symbol) at once, from the book's arrays and the flush's
running sums, with the builders' own arithmetic (`CountBarBuilder.update`,
`TimeBarBuilder._update_slow`, `BarBuilder._absorb` and `_finish`): the same sums, differences
and comparisons in the same order, so the bars and the state left are bit for bit the builders'
(`tests/pipeline/test_steady.py`). Anything else (two fills or two buckets in a batch, a batch
that opens a count bar and fills it, a late trade, a price that is not positive, a negative
size) is left to the builders. Only the indicators and the row of each bar are still computed
a bar at a time, by the pipeline (`SymbolPipeline.bar_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ingest.pipeline.bars import Bar
from ingest.pipeline.book import BASE_PV, BASE_V, END_PV, END_V, S0_PV, S0_V, C, H, L

if TYPE_CHECKING:
    import numpy.typing as npt

    from ingest.pipeline.bars import Slices
    from ingest.pipeline.book import SteadyBook

__all__ = ["IN_ARRAYS_MIN", "Closes", "close_in_arrays"]

IN_ARRAYS_MIN = 6
"""Fewer (series, batch) pairs than this go to the builders: done here they cost ~40 numpy
calls whatever their number (~0.1 ms in the daemon), through the builders ~30 us each."""


@dataclass(slots=True)
class _Update:
    """The new open-bar state of some (series, slot) pairs: the book's fields, per pair."""

    series: npt.NDArray[np.intp]
    slots: npt.NDArray[np.intp]
    moved: npt.NDArray[np.float64]
    """high, low, close, session volume and notional at the end (`SteadyBook.moved`)."""
    fixed: npt.NDArray[np.float64]
    """s0 volume and notional, base volume and notional (`SteadyBook.fixed`)."""
    n: npt.NDArray[np.int64]
    open: npt.NDArray[np.bool_]
    sv: npt.NDArray[np.float64]
    first: npt.NDArray[np.float64]
    start: npt.NDArray[np.int64]
    seq0: npt.NDArray[np.int64]
    fixes: npt.NDArray[np.int64]
    late: npt.NDArray[np.float64]
    """A time bar's late volume and notional (`SteadyBook.late`)."""
    timed: npt.NDArray[np.bool_]
    """The pairs of a time series: their new bucket is where `start` is."""

    def apply(self, book: SteadyBook) -> None:
        """Write it into the book."""
        i, slots = self.series, self.slots
        book.moved[i, :, slots] = self.moved
        book.fixed[i, :, slots] = self.fixed
        book.n[i, slots] = self.n
        book.open[i, slots] = self.open
        book.sv[i, slots] = self.sv
        book.sv_set[i, slots] = ~np.isnan(self.sv)
        book.first[i, slots] = self.first
        book.start[i, slots] = self.start
        book.seq0[i, slots] = self.seq0
        book.fixes[i, slots] = self.fixes
        book.late[i, :, slots] = self.late
        t = self.timed
        if t.any():
            widths = np.array([int(size) for _, size in book.kinds])[i[t]]
            book.bucket[i[t], slots[t]] = self.start[t] // widths
            book.seen[i[t], slots[t]] = True


@dataclass(slots=True)
class Closes:
    """What `close_in_arrays` did: which (series, batch) it took, their bars, the state to write."""

    handled: npt.NDArray[np.bool_]
    """Per series and batch: done here (the builders must not run it)."""
    bars: dict[int, list[tuple[int, Bar]]] = field(default_factory=dict)
    """Per batch (position), the bars closed here with their series."""
    update: _Update | None = None

    def apply(self, book: SteadyBook) -> None:
        """Write the new open-bar state into the book."""
        if self.update is not None:
            self.update.apply(book)


def close_in_arrays(
    book: SteadyBook,
    slots: npt.NDArray[np.intp],
    candidates: npt.NDArray[np.bool_],
    takes: npt.NDArray[np.bool_],
    first_seq: npt.NDArray[np.int64],
    cum_v: npt.NDArray[np.float64],
    cum_pv: npt.NDArray[np.float64],
    rows: npt.NDArray[np.intp],
    cols: npt.NDArray[np.intp],
    ts: npt.NDArray[np.int64],
    price: npt.NDArray[np.float64],
    size: npt.NDArray[np.float64],
    slices: Slices,
    vwap: npt.NDArray[np.float64],
) -> Closes:
    """The batches whose bars open or close as above, done in arrays.

    Per batch `k` (the steady step's rows): its slot, whether it is a candidate (taken, in its
    session), `takes[:, k]` (`SteadyBook.absorbs`), its first trade's sequence number, the
    session's running sums before each trade and after the last (`cum_v[k, :m + 1]`), each
    trade's row and column (`rows`, `cols`) in `ts`, `price` and `size`, the batch's summary
    and the session VWAP after it (NaN for none). Changes nothing: `Closes.apply` does.
    """
    out = Closes(np.zeros(takes.shape, np.bool_))
    if np.count_nonzero(candidates & ~takes) < IN_ARRAYS_MIN:
        return out
    starts = np.cumsum(slices.counts) - slices.counts
    clean = candidates & (slices.low > 0) & (np.minimum.reduceat(size, starts) >= 0)
    span = np.arange(cum_v.shape[1] - 1)
    prices = np.full((len(slots), len(span)), np.nan)
    prices[rows, cols] = price
    stamps = np.zeros((len(slots), len(span)), np.int64)
    stamps[rows, cols] = ts
    # Per pair of a series and a batch its open bar does not take: the trade the next bar
    # begins at (after the fill, at the new bucket, or 0 with no bar open), and for a time
    # series the new bucket's start; the builders' when the trade is -1.
    pairs: list[tuple[npt.NDArray[np.intp], ...]] = []
    counted = [i for i, (kind, _) in enumerate(book.kinds) if kind != "time"]
    if counted:  # every count series at once
        row, ks = np.nonzero(clean & ~takes[counted])
        series = np.array(counted, np.intp)[row]
        m = slices.counts[ks]
        begins = _begins(book, series, slots[ks], m, cum_v[ks], cum_pv[ks], span)
        pairs.append((series, ks, begins, stamps[ks, np.minimum(begins, m - 1)]))
    for i in (i for i, (kind, _) in enumerate(book.kinds) if kind == "time"):
        ks = np.flatnonzero(clean & ~takes[i])
        begins, opens = _new_bucket(book, i, slots[ks], slices.counts[ks], stamps[ks], span)
        pairs.append((np.full(len(ks), i, np.intp), ks, begins, opens))
    if not pairs:
        return out
    series, ks, e, opens = (np.concatenate(part) for part in zip(*pairs, strict=True))
    done = e >= 0
    if not done.any():
        return out
    series, ks, e, opens = series[done], ks[done], e[done], opens[done]
    out.handled[series, ks] = True
    pairs_of = _Pairs(
        series, ks, e, opens, slots[ks], first_seq[ks], cum_v[ks], cum_pv[ks], prices[ks], vwap[ks]
    )
    _close_pairs(book, out, pairs_of, span, slices)
    return out


@dataclass(frozen=True, slots=True)
class _Pairs:
    """(series, batch) pairs whose bars open or close here, with their batches' arrays."""

    series: npt.NDArray[np.intp]
    ks: npt.NDArray[np.intp]
    e: npt.NDArray[np.intp]
    """The trade the next bar begins at (none when it is the batch's length)."""
    opens: npt.NDArray[np.int64]
    """The next bar's start time."""
    slots: npt.NDArray[np.intp]
    offset: npt.NDArray[np.int64]
    """The sequence number of the batch's first trade."""
    cum_v: npt.NDArray[np.float64]
    cum_pv: npt.NDArray[np.float64]
    prices: npt.NDArray[np.float64]
    vwap: npt.NDArray[np.float64]


def _new_bucket(
    book: SteadyBook,
    i: int,
    slots: npt.NDArray[np.intp],
    m: npt.NDArray[np.intp],
    stamps: npt.NDArray[np.int64],
    span: npt.NDArray[np.intp],
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]]:
    """For time series `i`: where the batch's one later bucket begins, and that bucket's start.

    -1 (the builders') unless the open bar's bucket holds the batch's first trades and one
    later bucket all the rest: no late trade, no second new bucket. A series that has seen no
    trade yet (`TimeBarBuilder._seen`) opens its first bucket at trade 0 when all the batch is
    of one bucket.
    """
    width = int(book.kinds[i][1])
    bucket = book.bucket[i, slots]
    seen, was_open = book.seen[i, slots], book.open[i, slots]
    inside = span < m[:, None]
    buckets = stamps // width
    later = buckets.max(axis=1, where=inside, initial=np.iinfo(np.int64).min)
    mine = (buckets == bucket[:, None]) & inside
    e = np.where(seen, mine.sum(axis=1), 0)
    # Every trade from the e-th on is of the later bucket: then the open bucket's e trades are
    # the first e, and no trade is of a third bucket.
    rest = inside & (span >= e[:, None])
    ok = np.where(seen, was_open & (later > bucket), ~was_open)
    ok &= np.where(rest, buckets == later[:, None], True).all(axis=1)
    return np.where(ok, e, -1), later * width


def _begins(
    book: SteadyBook,
    series: npt.NDArray[np.intp],
    slots: npt.NDArray[np.intp],
    m: npt.NDArray[np.intp],
    cum_v: npt.NDArray[np.float64],
    cum_pv: npt.NDArray[np.float64],
    span: npt.NDArray[np.intp],
) -> npt.NDArray[np.intp]:
    """For these (count series, batch) pairs: the trade the next bar begins at, or -1."""
    kinds = np.array([kind for kind, _ in book.kinds])[series]
    threshold = np.array([size for _, size in book.kinds])[series]
    ticks = threshold.astype(np.int64)  # `CountBarBuilder._ticks`
    tick, volume = kinds == "tick", kinds == "volume"
    was_open = book.open[series, slots]
    # The trade that fills the open bar (`CountBarBuilder._closing_trade`): the first whose
    # running sum reaches the threshold, by the same expression; -1 for none.
    need = ticks - book.n[series, slots]
    sums = np.where(volume[:, None], cum_v, cum_pv)  # a dollar bar's: notional
    s0 = book.fixed[series, np.where(volume, S0_V, S0_PV), slots]
    base = book.fixed[series, np.where(volume, BASE_V, BASE_PV), slots]
    reached = ((sums[:, 1:] - s0[:, None]) + base[:, None] >= threshold[:, None]) & (
        span < m[:, None]
    )
    filling = np.where(
        tick,
        np.where(need <= m, need - 1, -1),
        np.where(reached.any(axis=1), reached.argmax(axis=1), -1),
    )
    e = np.where(was_open, filling + 1, 0)
    # The bar begun at `e` takes the rest of the batch: it must not fill (a second fill, or
    # a fill of the bar the batch opens, is the builders').
    rows = np.arange(len(series))
    refills = np.where(
        tick, m - e >= ticks, (e < m) & (sums[rows, m] - sums[rows, e] + 0.0 >= threshold)
    )
    return np.where((filling >= 0) | ~was_open, np.where(refills, -1, e), -1)


def _close_pairs(
    book: SteadyBook, out: Closes, pairs: _Pairs, span: npt.NDArray[np.intp], slices: Slices
) -> None:
    """Close and open the bars of these (series, batch) pairs.

    The next bar begins at trade `e` (none when `e` is the batch's length) and at time
    `opens`. A count bar's fill is trade `e - 1`, in the bar; a time bar's is trade `e`, the
    first of the new bucket, which the closed bar does not hold (it may hold none: `e` 0).
    """
    series, ks, e, opens, slots = pairs.series, pairs.ks, pairs.e, pairs.opens, pairs.slots
    offset, cum_v, cum_pv, prices = pairs.offset, pairs.cum_v, pairs.cum_pv, pairs.prices
    vwap = pairs.vwap
    m = slices.counts[ks]
    rows = np.arange(len(ks))
    timed = np.array([kind == "time" for kind, _ in book.kinds])[series]
    was_open = book.open[series, slots]
    whole = e == m  # filled by the last trade: the batch is the closed bar's whole segment
    # The segments' ranges as `_absorb` takes them: the batch's own when whole (numpy's), else
    # Python's max and min of the segment, which numpy's equal for positive prices.
    before = span < e[:, None]
    after = (span < m[:, None]) & ~before
    top = np.where(whole, slices.high[ks], np.where(before, prices, -np.inf).max(axis=1))
    bottom = np.where(whole, slices.low[ks], np.where(before, prices, np.inf).min(axis=1))
    rest_top = np.where(e == 0, slices.high[ks], np.where(after, prices, -np.inf).max(axis=1))
    rest_low = np.where(e == 0, slices.low[ks], np.where(after, prices, np.inf).min(axis=1))

    moved = book.moved[series, :, slots]  # (pair, field): copies
    fixed = book.fixed[series, :, slots]
    n = book.n[series, slots]
    sv = book.sv[series, slots]
    first = book.first[series, slots]
    start = book.start[series, slots]
    seq0 = book.seq0[series, slots]
    fixes = book.fixes[series, slots]
    late = book.late[series, :, slots]
    c = np.flatnonzero(was_open)
    if len(c):
        # The open bar takes trades [0, e) and closes (`_absorb`, then `_finish`).
        ec = e[c]
        high = np.where(top[c] > moved[c, H], top[c], moved[c, H])
        low = np.where(bottom[c] < moved[c, L], bottom[c], moved[c, L])
        took = ec > 0
        close = np.where(took, prices[c, ec - 1], moved[c, C])
        count = n[c] + ec
        v_end, pv_end = cum_v[c, ec], cum_pv[c, ec]
        # `_finish`: a time bar's late trades inside its sums are left out (0.0 for the rest).
        volume = (fixed[c, BASE_V] + (v_end - fixed[c, S0_V])) - late[c, 0]
        notional = (fixed[c, BASE_PV] + (pv_end - fixed[c, S0_PV])) - late[c, 1]
        # `TradeSlice.session_vwap` after trade e - 1, or the batch's `sv_end` when it is last.
        ev, epv = book.ev[slots[c]], book.epv[slots[c]]
        session_v = np.where(ev != 0, v_end - ev, v_end)
        session_pv = np.where(ev != 0, pv_end - epv, pv_end)
        bar_sv = np.divide(session_pv, session_v, out=np.full(len(c), np.nan), where=session_v > 0)
        bar_sv = np.where(whole[c], vwap[c], np.where(took, bar_sv, sv[c]))
        values = zip(
            ks[c].tolist(),
            series[c].tolist(),
            start[c].tolist(),
            first[c].tolist(),
            high.tolist(),
            low.tolist(),
            close.tolist(),
            volume.tolist(),
            notional.tolist(),
            count.tolist(),
            bar_sv.tolist(),
            (offset[c] + ec - 1 + timed[c]).tolist(),
            fixes[c].tolist(),
            strict=True,
        )
        bars = out.bars
        for k, i, ts0, o, hi, lo, cl, vol, nt, cnt, bsv, seq, fx in values:
            bar = Bar(ts0, o, hi, lo, cl, vol, cnt, nt / vol if vol > 0 else None,
                      None if bsv != bsv else bsv, seq, fx)  # fmt: skip
            bars.setdefault(k, []).append((i, bar))
        # A bar filled by the last trade leaves none open: nothing reads the book's copy of it
        # until the next batch begins one.
    # The next bar begins at trade `e` and takes the rest of the batch (`_begin`, `_absorb`).
    o_ = np.flatnonzero(e < m)
    eo = e[o_]
    moved[o_, H], moved[o_, L], moved[o_, C] = rest_top[o_], rest_low[o_], slices.last[ks[o_]]
    fixed[o_, S0_V], fixed[o_, S0_PV] = cum_v[o_, eo], cum_pv[o_, eo]
    fixed[o_, BASE_V] = fixed[o_, BASE_PV] = 0.0
    n[o_] = m[o_] - eo
    sv[o_] = vwap[o_]
    first[o_] = prices[o_, eo]
    start[o_] = opens[o_]
    seq0[o_] = offset[o_] + eo
    fixes[o_] = 0
    late[o_] = 0.0
    moved[:, END_V], moved[:, END_PV] = cum_v[rows, m], cum_pv[rows, m]  # `_s_end_v`, `_pv`
    out.update = _Update(
        series, slots, moved, fixed, n, e < m, sv, first, start, seq0, fixes, late, timed
    )
