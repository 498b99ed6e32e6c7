"""Bar builders: turn one symbol's trades into time, tick, volume and dollar bars.

Builders work on whole batches (`TradeSlice`), not on single trades, so the per-trade cost is a
few numpy operations shared by every builder. The rules (see `docs/pipeline.md`):

* A time bar covers `[k * width, (k + 1) * width)` on the UTC clock and closes when a trade of a
  later bucket arrives. A trade older than the open bucket is *late*: it is counted and left out
  of every bar, so a closed bar is never changed after it was emitted.
* A tick, volume or dollar bar closes on the trade that makes its count, volume or notional reach
  the threshold; that trade belongs to the bar (nothing is split) and the next trade opens the
  next bar. These bars follow arrival order, so they have no late trades.
* Volume and notional of a bar are differences of the session's running sums (`TradeSlice.cv`,
  `.cpv`), which are accumulated strictly left to right from the session start. Every number
  therefore depends only on the trades, never on how they were cut into batches.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ingest.config import BarSpec

__all__ = [
    "Bar",
    "BarBuilder",
    "CountBarBuilder",
    "Slices",
    "TimeBarBuilder",
    "TradeSlice",
    "create_builder",
]

_NS = 1_000_000_000
_NONE: tuple[()] = ()

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(slots=True)
class TradeSlice:
    """Consecutive trades of one session, with the session's running sums.

    `cv[i]` and `cpv[i]` are the session's volume and notional before trade `i` of the slice
    (`cv[0]` carries the sum of earlier batches), so they have one more element than `ts`.
    `ev`/`epv` are the same sums restricted to trades of an earlier UTC day, which the session
    VWAP leaves out; they are None when the session has none. The sums are lists of Python
    floats: builders read them one at a time, and only at bar boundaries.
    """

    ts: IntArray
    price: FloatArray
    size: FloatArray
    cv: list[float]
    cpv: list[float]
    ev: list[float] | None
    epv: list[float] | None
    tmin: int
    tmax: int
    pmin: float
    pmax: float
    offset: int
    """Arrival sequence number of trade 0 of the slice (orders bars closed in one call)."""
    last_price: float
    sv_end: float | None
    """Session VWAP after the slice's last trade."""
    price_list: list[float] | None = None
    """`price` as Python floats, when the caller has them already (else see `prices`)."""

    def prices(self) -> list[float]:
        """`price` as Python floats, converted once and only when a bar boundary needs it."""
        if self.price_list is None:
            self.price_list = self.price.tolist()
        return self.price_list

    def session_vwap(self, i: int) -> float | None:
        """Session VWAP just after trade `i` of the slice."""
        volume = self.cv[i + 1]
        notional = self.cpv[i + 1]
        if self.ev is not None and self.epv is not None:
            volume -= self.ev[i + 1]
            notional -= self.epv[i + 1]
        return notional / volume if volume > 0 else None


@dataclass(frozen=True, slots=True)
class Slices:
    """Many symbols' slices of trades, one entry a symbol, by their summaries.

    What the steady step decides and moves open bars on from, for all of them at once
    (`ingest.pipeline.steady`, `ingest.pipeline.book`).
    """

    tmin: IntArray
    tmax: IntArray
    counts: IntArray
    end_v: FloatArray
    """The session's running volume after each slice."""
    end_pv: FloatArray
    """The session's running notional after each slice."""
    high: FloatArray
    low: FloatArray
    last: FloatArray
    """Each slice's last price."""

    def take(self, which: npt.NDArray[np.intp]) -> Slices:
        """These entries only."""
        return Slices(
            self.tmin[which],
            self.tmax[which],
            self.counts[which],
            self.end_v[which],
            self.end_pv[which],
            self.high[which],
            self.low[which],
            self.last[which],
        )


@dataclass(slots=True)
class Bar:
    """One finished (or, on flush, partial) bar, before indicators are attached."""

    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    trade_count: int
    vwap: float | None
    session_vwap: float | None
    seq: int
    """Arrival sequence number of the trade that closed the bar (-1 for a flushed bar)."""
    corrections: int = 0
    """Trade corrections and cancels applied to the bar while it was open."""


class BarBuilder:
    """State of the one open bar of a series; subclasses decide where bars end."""

    __slots__ = (
        "_base_pv",
        "_base_v",
        "_c",
        "_fixes",
        "_h",
        "_l",
        "_n",
        "_o",
        "_open",
        "_s0_pv",
        "_s0_v",
        "_s_end_pv",
        "_s_end_v",
        "_seq0",
        "_sv",
        "_ts",
    )

    def __init__(self) -> None:
        self._open = False
        self._ts = 0
        self._o = self._h = self._l = self._c = 0.0
        self._n = 0
        self._base_v = self._base_pv = 0.0
        """Volume and notional of the open bar from earlier sessions (bars can span midnight)."""
        self._s0_v = self._s0_pv = 0.0
        """Session running sums just before the open bar's first trade."""
        self._sv: float | None = None
        """Session VWAP after the open bar's last trade (a value: no batch is kept alive)."""
        self._s_end_v = self._s_end_pv = 0.0
        self._seq0 = 0
        """Arrival sequence number of the open bar's first trade."""
        self._fixes = 0

    def reset_session(self) -> None:
        """The session's running sums restart at zero: fold the open bar's share into its base."""
        if self._open:
            self._base_v += self._s_end_v - self._s0_v
            self._base_pv += self._s_end_pv - self._s0_pv
            self._s0_v = self._s0_pv = 0.0
        self._s_end_v = self._s_end_pv = 0.0

    def update(self, trades: TradeSlice) -> Sequence[Bar]:
        """Add a slice of trades; return the bars they closed, oldest first."""
        raise NotImplementedError

    def extend(
        self, high: float, low: float, last: float, count: int, session_vwap: float | None
    ) -> None:
        """Trades that all belong to the open bar and close nothing: the common case.

        `high` and `low` are their price range, `last` the last one's price. The caller has
        set the session's running sums after them (`_s_end_v`, `_s_end_pv`) already.
        """
        self._h = max(self._h, high)
        self._l = min(self._l, low)
        self._c = last
        self._n += count
        self._sv = session_vwap

    # --- corrections (rare: plain Python, never on the per-trade path) -------------------------

    def holds(self, seq: int, ts: int) -> bool:
        """Whether the open bar includes the trade with this sequence number and time."""
        return self._open and seq >= self._seq0

    def member_mask(self, seqs: IntArray, ts: IntArray) -> npt.NDArray[np.bool_]:
        """Which of these trades the open bar includes (`holds`, vectorised)."""
        return seqs >= self._seq0

    @property
    def open_since(self) -> int:
        """Sequence number of the open bar's first trade (meaningful while a bar is open)."""
        return self._seq0

    def shift_session(self, volume: float, notional: float) -> None:
        """The session's running sums moved by a correction: move this builder's copies too.

        A uniform shift keeps every difference, so no bar changes; `restate` then fixes the one
        bar that holds the corrected trade.
        """
        self._s0_v += volume
        self._s0_pv += notional
        self._s_end_v += volume
        self._s_end_pv += notional

    def restate(
        self,
        first: float,
        high: float,
        low: float,
        last: float,
        count: int,
        volume: float,
        notional: float,
        session_vwap: float | None,
    ) -> None:
        """Replace the open bar's values with ones recomputed from its (corrected) trades."""
        self._fixes += 1
        if count == 0:
            self._drop_open_bar()
            return
        self._o, self._h, self._l, self._c, self._n = first, high, low, last, count
        self._base_v = volume - (self._s_end_v - self._s0_v) + self._late_v()
        self._base_pv = notional - (self._s_end_pv - self._s0_pv) + self._late_pv()
        self._sv = session_vwap

    def _drop_open_bar(self) -> None:
        """Every trade of the open bar was cancelled: the next trade opens a fresh one."""
        self._open = False

    def flush(self) -> Bar | None:
        """The open bar as it stands (None if there is none); the builder starts empty again."""
        if not self._open:
            return None
        bar = self._finish(self._s_end_v, self._s_end_pv, seq=-1)
        self._open = False
        return bar

    def _begin(self, ts: int, price: float, s0_v: float, s0_pv: float, seq: int) -> None:
        self._open = True
        self._seq0 = seq
        self._fixes = 0
        self._ts = ts
        self._o = price
        self._h = -math.inf
        self._l = math.inf
        self._n = 0
        self._base_v = self._base_pv = 0.0
        self._s0_v = s0_v
        self._s0_pv = s0_pv

    def _finish(self, s_v: float, s_pv: float, seq: int) -> Bar:
        volume = self._base_v + (s_v - self._s0_v) - self._late_v()
        notional = self._base_pv + (s_pv - self._s0_pv) - self._late_pv()
        return Bar(
            ts=self._ts,
            open=self._o,
            high=self._h,
            low=self._l,
            close=self._c,
            volume=volume,
            trade_count=self._n,
            vwap=notional / volume if volume > 0 else None,
            session_vwap=self._sv,
            seq=seq,
            corrections=self._fixes,
        )

    def _late_v(self) -> float:
        return 0.0

    def _late_pv(self) -> float:
        return 0.0

    def _absorb(self, trades: TradeSlice, start: int, end: int) -> None:
        """Trades `[start, end)` of the slice all belong to the open bar."""
        if start == 0 and end == len(trades.ts):
            high, low = trades.pmax, trades.pmin
        else:
            segment = trades.prices()[start:end]
            high, low = max(segment), min(segment)
        self._h = max(self._h, high)
        self._l = min(self._l, low)
        self._c = trades.last_price if end == len(trades.ts) else trades.prices()[end - 1]
        self._n += end - start
        self._sv = trades.sv_end if end == len(trades.ts) else trades.session_vwap(end - 1)


class TimeBarBuilder(BarBuilder):
    """Clock-aligned time bars: a 1-minute bar starts on the minute, UTC."""

    __slots__ = ("_bucket", "_lpv", "_lv", "_seen", "_width", "late_mask", "late_trades")

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self._width = round(seconds * _NS)
        self._bucket = 0
        """Bucket number (start // width) of the open bar; only meaningful while one is open."""
        self._seen = False
        self._lv = self._lpv = 0.0
        """Volume and notional of late trades inside the open bar's running-sum range."""
        self.late_trades = 0
        self.late_mask: npt.NDArray[np.bool_] | None = None
        """Which trades of the last slice were late (None when none were)."""

    def flush(self) -> Bar | None:
        """The open bar as it stands; afterwards the series starts afresh with the next trade."""
        self._seen = False
        return super().flush()

    def _late_v(self) -> float:
        return self._lv

    def _late_pv(self) -> float:
        return self._lpv

    def holds(self, seq: int, ts: int) -> bool:
        """The open bar includes a trade that arrived since it opened, stamped in its bucket."""
        return self._open and seq >= self._seq0 and ts // self._width == self._bucket

    def member_mask(self, seqs: IntArray, ts: IntArray) -> npt.NDArray[np.bool_]:
        """Trades since the open bar's first, stamped in its bucket (late ones never are)."""
        mask: npt.NDArray[np.bool_] = (seqs >= self._seq0) & (ts // self._width == self._bucket)
        return mask

    def _drop_open_bar(self) -> None:
        super()._drop_open_bar()
        self._seen = False

    def _begin_bucket(self, trades: TradeSlice, i: int, bucket: int) -> None:
        price = trades.prices()[i]
        self._begin(bucket * self._width, price, trades.cv[i], trades.cpv[i], trades.offset + i)
        self._bucket = bucket
        self._lv = self._lpv = 0.0

    def update(self, trades: TradeSlice) -> Sequence[Bar]:
        """Add a slice of trades; return the bars closed by trades of later buckets."""
        self.late_mask = None
        self._s_end_v = trades.cv[-1]
        self._s_end_pv = trades.cpv[-1]
        lo = self._bucket * self._width
        if self._seen and trades.tmin >= lo and trades.tmax < lo + self._width:
            # The common case: the whole slice falls into the open bucket.
            self.extend(trades.pmax, trades.pmin, trades.last_price, len(trades.ts), trades.sv_end)
            return _NONE
        return self._update_slow(trades, len(trades.ts))

    def _update_slow(self, trades: TradeSlice, m: int) -> list[Bar]:
        buckets = trades.ts // self._width
        running = np.maximum.accumulate(buckets)
        if self._seen:
            np.maximum(running, self._bucket, out=running)
        late = buckets < running
        previous = np.empty(m, dtype=np.int64)
        previous[1:] = running[:-1]
        previous[0] = self._bucket if self._seen else running[0] - 1
        starts = np.flatnonzero(running > previous).tolist()
        n_late = int(np.count_nonzero(late))
        if n_late:
            self.late_trades += n_late
            self.late_mask = late
        closed: list[Bar] = []
        opening = set(starts)
        bounds = [0, *starts, m] if not starts or starts[0] != 0 else [*starts, m]
        for start, end in itertools.pairwise(bounds):
            if start in opening:
                if self._open:
                    closed.append(
                        self._finish(trades.cv[start], trades.cpv[start], trades.offset + start)
                    )
                self._seen = True
                self._begin_bucket(trades, start, int(buckets[start]))
            self._add_segment(trades, start, end, late if n_late else None)
        return closed

    def _add_segment(
        self,
        trades: TradeSlice,
        start: int,
        end: int,
        late: npt.NDArray[np.bool_] | None,
    ) -> None:
        if late is None or not late[start:end].any():
            self._absorb(trades, start, end)
            return
        keep = np.flatnonzero(~late[start:end]) + start
        for i in np.flatnonzero(late[start:end]).tolist():
            size = float(trades.size[start + i])
            self._lv += size
            self._lpv += float(trades.price[start + i]) * size
        if len(keep):
            prices = trades.price[keep]
            self._h = max(self._h, float(prices.max()))
            self._l = min(self._l, float(prices.min()))
            last = int(keep[-1])
            self._c = float(trades.price[last])
            self._n += len(keep)
            self._sv = trades.session_vwap(last)


class CountBarBuilder(BarBuilder):
    """Tick, volume or dollar bars: a bar closes on the trade that reaches the threshold."""

    __slots__ = ("_kind", "_threshold", "_ticks")

    def __init__(self, kind: str, threshold: float) -> None:
        super().__init__()
        self._kind = kind
        self._threshold = threshold
        self._ticks = int(threshold)

    def update(self, trades: TradeSlice) -> Sequence[Bar]:
        """Add a slice of trades; return the bars whose threshold they reached."""
        m = len(trades.ts)
        self._s_end_v = trades.cv[-1]
        self._s_end_pv = trades.cpv[-1]
        if self._open:
            if self._kind == "tick":
                fills = self._n + m >= self._ticks
            elif self._kind == "volume":
                fills = (trades.cv[-1] - self._s0_v) + self._base_v >= self._threshold
            else:
                fills = (trades.cpv[-1] - self._s0_pv) + self._base_pv >= self._threshold
            if not fills:  # the common case: the slice does not fill the open bar
                self.extend(trades.pmax, trades.pmin, trades.last_price, m, trades.sv_end)
                return _NONE
        closed: list[Bar] = []
        cv, cpv = trades.cv, trades.cpv
        prices = trades.prices()
        pos = 0
        while pos < m:
            if not self._open:
                self._begin(
                    int(trades.ts[pos]), prices[pos], cv[pos], cpv[pos], trades.offset + pos
                )
            last = self._closing_trade(cv, cpv, pos, m)
            end = m if last is None else last + 1
            self._absorb(trades, pos, end)
            if last is not None:
                closed.append(self._finish(cv[end], cpv[end], trades.offset + last))
                self._open = False
            pos = end
        return closed

    def _closing_trade(self, cv: list[float], cpv: list[float], pos: int, m: int) -> int | None:
        """Index of the trade in `[pos, m)` that fills the open bar, if any.

        `cv[j + 1]` is the running sum after trade `j`; the bar's fill after that trade is
        `(cv[j + 1] - s0) + base`, non-decreasing in `j`, so the first trade to reach the
        threshold is found by bisection with that exact expression.
        """
        if self._kind == "tick":
            need = self._ticks - self._n
            return pos + need - 1 if m - pos >= need else None
        if self._kind == "volume":
            sums, s0, base = cv, self._s0_v, self._base_v
        else:
            sums, s0, base = cpv, self._s0_pv, self._base_pv
        if (sums[m] - s0) + base < self._threshold:
            return None
        after = bisect.bisect_left(
            sums, self._threshold, pos + 1, m + 1, key=lambda total: (total - s0) + base
        )
        return after - 1


def create_builder(spec: BarSpec) -> TimeBarBuilder | CountBarBuilder:
    """The builder of one configured bar series."""
    if spec.kind == "time":
        return TimeBarBuilder(spec.size)
    return CountBarBuilder(spec.kind, spec.size)
