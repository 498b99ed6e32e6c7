"""One symbol's pipeline: every configured bar series, its indicators, tick anomalies.

Per batch the pipeline does the shared work once -- the session's running volume and notional
(one `cumsum`), the batch's time and price range -- and hands the result to every bar builder,
which in the common case (no bar closes) only compares a few scalars. Indicators run in plain
Python on each closed bar. The anomaly detector works on the whole batch at once. A small batch
takes the same steps in plain Python, where numpy's fixed cost per call would dominate.

The session is the UTC day: it starts with the first trade of a new day (the newest day seen),
and a trade stamped with an earlier day is left out of the session VWAP.
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ingest.pipeline.anomaly import Anomaly, AnomalyDetector
from ingest.pipeline.bars import (
    Bar,
    BarBuilder,
    TimeBarBuilder,
    TradeSlice,
    create_builder,
)
from ingest.pipeline.indicators import IndicatorState, indicator_columns

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ingest.config import BarSpec, PipelineSettings
    from ingest.pipeline.book import SteadyBook

__all__ = ["PipelineOutput", "RecentTrades", "SymbolPipeline", "indicator_columns"]

Row = dict[str, Any]

_DAY_NS = 86_400 * 1_000_000_000


def _ratio(notional: float, volume: float) -> float | None:
    return notional / volume if volume > 0 else None


_min = np.minimum.reduce
_max = np.maximum.reduce

SCALAR_MAX = 64
"""Slices of up to this many trades get their running sums and price range in plain Python.

Below it numpy's fixed cost per call outweighs its speed (crossover measured at 64-80 trades).
Both paths give identical results: the tests force either one and compare them.
"""

_Sums = tuple[list[float], list[float], list[float] | None, list[float] | None]


def _bounds(prices: list[float], price: npt.NDArray[np.float64]) -> tuple[float, float]:
    """Lowest and highest price, as numpy's reductions give them.

    Python's `min` and `max` agree with numpy's except on which zero a tie of 0.0 and -0.0
    yields, so a zero bound is left to numpy.
    """
    low, high = min(prices), max(prices)
    if low == 0.0:
        low = float(_min(price))
    if high == 0.0:
        high = float(_max(price))
    return low, high


def _where(flags: list[bool], values: list[float]) -> list[float]:
    """`values` where `flags` is set, else 0.0 (numpy adds those zeros too)."""
    return [v if f else 0.0 for f, v in zip(flags, values, strict=True)]


@dataclass(frozen=True, slots=True)
class RecentTrades:
    """A symbol's latest trades with corrections applied (cancelled ones left out).

    What an open bar is recomputed from when a correction hits it (`ingest.corrections` keeps
    them). `oldest` is the sequence number of the oldest trade remembered, cancelled or not: an
    open bar that began before it cannot be recomputed.
    """

    seq: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    price: npt.NDArray[np.float64]
    size: npt.NDArray[np.float64]
    oldest: int


@dataclass(slots=True)
class PipelineOutput:
    """Rows produced by one call: closed bars (with indicators) and flagged trades."""

    bars: list[Row] = field(default_factory=list)
    anomalies: list[Row] = field(default_factory=list)


class _Series:
    """One bar series: its builder and the indicator state fed by its closes."""

    __slots__ = ("builder", "indicators", "kind", "label")

    def __init__(self, spec: BarSpec, settings: PipelineSettings) -> None:
        self.kind = spec.kind
        self.label = spec.label
        self.builder = create_builder(spec)
        self.indicators = IndicatorState(settings)


class SymbolPipeline:
    """All derived state of one symbol. Not thread-safe; owned by the symbol's task.

    Output rows of one call are ordered as if the trades had been fed one at a time: by the
    trade that closed each bar, then by the configured order of the series.
    """

    __slots__ = (
        "_anomaly",
        "_anomaly_fixed",
        "_book",
        "_builders",
        "_cpv",
        "_cv",
        "_day",
        "_epv",
        "_ev",
        "_seq",
        "_series",
        "_slot",
        "late_trades",
        "symbol",
    )

    def __init__(self, symbol: str, settings: PipelineSettings) -> None:
        self.symbol = symbol
        self._series = [_Series(spec, settings) for spec in settings.bars]
        self._builders: list[BarBuilder] = [s.builder for s in self._series]
        self._anomaly = AnomalyDetector(settings.anomaly)
        self._anomaly_fixed = {
            "method": settings.anomaly.method,
            "window": settings.anomaly.window,
            "threshold": settings.anomaly.threshold,
        }
        self._day: int | None = None
        """The session's UTC day number (ts // day); None before the first trade."""
        self._cv = self._cpv = 0.0
        """Session running volume and notional after the last trade."""
        self._ev = self._epv = 0.0
        """The same over trades of earlier days that arrived during this session."""
        self._seq = 0
        self.late_trades = 0
        """Trades that arrived after a later time bar had opened (left out of that series)."""
        self._book: SteadyBook | None = None
        """The steady step's book while it holds this pipeline's state (`ingest.pipeline.book`):
        then every method that reads or changes that state first takes it back."""
        self._slot = -1
        """The pipeline's slot in `_book` while held, else -1."""

    def on_trades(
        self,
        ts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        size: npt.NDArray[np.float64],
    ) -> PipelineOutput:
        """Feed a batch of one symbol's trades, in arrival order."""
        out = PipelineOutput()
        if len(ts) == 0:
            return out
        out.bars = self.bars_of(ts, price, size)
        for anomaly in self._anomaly.detect(price):
            out.anomalies.append(self.anomaly_row(int(ts[anomaly.index]), anomaly))
        return out

    def bars_of(
        self,
        ts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        size: npt.NDArray[np.float64],
    ) -> list[Row]:
        """`on_trades` of a non-empty batch but for its anomaly check: the bars it closes."""
        self._take_back()
        m = len(ts)
        if m <= SCALAR_MAX:
            stamps = ts.tolist()
            tmin, tmax = min(stamps), max(stamps)
        else:
            tmin, tmax = int(_min(ts)), int(_max(ts))
        day = self._day
        if day is not None and tmin // _DAY_NS == day and tmax // _DAY_NS == day:
            closed = self._run_slice(ts, price, size, tmin, tmax, 0, None)
        else:
            closed = self._run_sessions(ts, price, size)
        self._seq += m
        return self._rows(closed)

    def close_bars(
        self,
        trades: TradeSlice,
        series: Sequence[int],
        closed: Sequence[tuple[int, Bar]] = (),
    ) -> list[Row]:
        """The bars these series close on a slice of a pipeline the steady step holds.

        For `ingest.pipeline.book`, which holds the session (`trades` carries its sums) and
        has lent these series' builders their open bars; the other series took the slice
        closing nothing, or closed the bars `closed` in the steady step
        (`ingest.pipeline.closes`).
        """
        return self._rows([*closed, *self._update(trades, series)])

    def bar_rows(self, closed: Sequence[tuple[int, Bar]]) -> list[Row]:
        """The rows of bars the steady step closed (series, bar), with their indicators."""
        return self._rows(list(closed))

    def _rows(self, closed: list[tuple[int, Bar]]) -> list[Row]:
        """The rows of the bars one slice closed, as if its trades came one at a time."""
        if not closed:
            return []
        if len(closed) > 1:
            closed.sort(key=lambda item: (item[1].seq, item[0]))
        return [self._row(self._series[i], bar, partial=False) for i, bar in closed]

    def _take_back(self) -> None:
        """Before anything reads or changes the steady state: take it back if a book holds it."""
        if self._book is not None:
            self._book.release(self)

    def anomaly_row(self, ts: int, anomaly: Anomaly) -> Row:
        """The anomalies table's row of a flagged trade stamped `ts`."""
        return {
            "symbol": self.symbol,
            "ts": ts,
            "price": anomaly.price,
            "zscore": anomaly.zscore,
            **self._anomaly_fixed,
        }

    @property
    def builders(self) -> list[BarBuilder]:
        """The bar builders, in the configured order of the series."""
        self._take_back()
        return self._builders

    @property
    def anomaly(self) -> AnomalyDetector:
        """The tick anomaly detector."""
        self._take_back()
        return self._anomaly

    def warm_up(self, closes: Mapping[tuple[str, str], Sequence[float]]) -> int:
        """Feed each series the closes of its history (oldest first); how many series took some.

        Only the indicators learn them: no bar is emitted, and the bar builders start empty.
        """
        warmed = 0
        for series in self._series:
            history = closes.get((series.kind, series.label))
            if history:
                for close in history:
                    series.indicators.update(close)
                warmed += 1
        return warmed

    @property
    def trades_seen(self) -> int:
        """Trades fed so far: the next trade's arrival sequence number."""
        if self._book is not None:
            return int(self._book.seq[self._slot])
        return self._seq

    def correct_trade(
        self, seq: int, ts: int, d_volume: float, d_notional: float, recent: RecentTrades
    ) -> tuple[int, int]:
        """A trade was corrected or cancelled: restate every open bar that includes it.

        `d_volume` and `d_notional` are the changes to the trade's size and price x size (the
        session VWAP follows them when the trade is of the session's day); `recent` already
        holds the corrected values. Returns how many series had their open bar restated, and
        how many series there are: the others had closed the bar holding the trade (or left it
        out as late), or their open bar began before the oldest remembered trade.
        """
        self._take_back()
        if self._day is not None and ts // _DAY_NS == self._day:
            self._cv += d_volume
            self._cpv += d_notional
            for series in self._series:
                series.builder.shift_session(d_volume, d_notional)
        restated = 0
        for series in self._series:
            builder = series.builder
            if not builder.holds(seq, ts) or builder.open_since < recent.oldest:
                continue
            mask = builder.member_mask(recent.seq, recent.ts)
            price, size = recent.price[mask], recent.size[mask]
            count = len(price)
            builder.restate(
                first=float(price[0]) if count else 0.0,
                high=float(price.max()) if count else 0.0,
                low=float(price.min()) if count else 0.0,
                last=float(price[-1]) if count else 0.0,
                count=count,
                volume=float(size.sum()),
                notional=float((price * size).sum()),
                session_vwap=_ratio(self._cpv - self._epv, self._cv - self._ev),
            )
            restated += 1
        return restated, len(self._series)

    def flush(self) -> PipelineOutput:
        """Close every open bar as partial (shutdown); indicators include the partial bar."""
        self._take_back()
        out = PipelineOutput()
        for series in self._series:
            bar = series.builder.flush()
            if bar is not None:
                out.bars.append(self._row(series, bar, partial=True))
        return out

    def _run_sessions(
        self,
        ts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        size: npt.NDArray[np.float64],
    ) -> list[tuple[int, Bar]]:
        """The slow path: the batch starts a session, or holds trades of an earlier day."""
        days = ts // _DAY_NS
        session = np.maximum.accumulate(days)
        if self._day is not None:
            np.maximum(session, self._day, out=session)
        earlier = days < session
        previous = np.empty_like(session)
        previous[1:] = session[:-1]
        previous[0] = self._day if self._day is not None else session[0] - 1
        starts = np.flatnonzero(session > previous).tolist()
        bounds = sorted({0, *starts, len(ts)})
        closed: list[tuple[int, Bar]] = []
        for start, end in itertools.pairwise(bounds):
            if start in starts:
                self._day = int(session[start])
                self._cv = self._cpv = self._ev = self._epv = 0.0
                for series in self._series:
                    series.builder.reset_session()
            part = slice(start, end)
            piece_ts = ts[part]
            closed += self._run_slice(
                piece_ts,
                price[part],
                size[part],
                int(_min(piece_ts)),
                int(_max(piece_ts)),
                start,
                earlier[part] if earlier[part].any() else None,
            )
        return closed

    def _run_slice(
        self,
        ts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        size: npt.NDArray[np.float64],
        tmin: int,
        tmax: int,
        start: int,
        earlier: npt.NDArray[np.bool_] | None,
    ) -> list[tuple[int, Bar]]:
        """Run one session's consecutive trades through every bar builder."""
        m = len(ts)
        prices: list[float] | None = None
        if m <= SCALAR_MAX:
            prices = price.tolist()
            sums = self._sums_scalar(prices, size.tolist(), earlier)
            pmin, pmax = _bounds(prices, price)
        else:
            sums = self._sums_vector(price, size, earlier)
            pmin, pmax = float(_min(price)), float(_max(price))
        cv, cpv, ev, epv = sums
        self._cv, self._cpv = end_v, end_pv = cv[m], cpv[m]
        if ev is not None and epv is not None:
            self._ev, self._epv = ev[m], epv[m]
        trades = TradeSlice(
            ts=ts,
            price=price,
            size=size,
            cv=cv,
            cpv=cpv,
            ev=ev,
            epv=epv,
            tmin=tmin,
            tmax=tmax,
            pmin=pmin,
            pmax=pmax,
            offset=self._seq + start,
            last_price=float(price[m - 1]),
            sv_end=_ratio(end_pv - self._epv, end_v - self._ev),
            price_list=prices,
        )
        return self._update(trades, range(len(self._series)))

    def _update(self, trades: TradeSlice, series: Sequence[int]) -> list[tuple[int, Bar]]:
        """Run a slice through these series' builders: the bars closed, with their series."""
        closed: list[tuple[int, Bar]] = []
        late: list[npt.NDArray[np.bool_]] = []
        for i in series:
            builder = self._builders[i]
            bars = builder.update(trades)
            if bars:
                closed.extend((i, bar) for bar in bars)
            if isinstance(builder, TimeBarBuilder) and builder.late_mask is not None:
                late.append(builder.late_mask)
        if late:
            # A trade late for several series is one late trade.
            mask = late[0] if len(late) == 1 else np.logical_or.reduce(late)
            self.late_trades += int(np.count_nonzero(mask))
        return closed

    def _sums_vector(
        self,
        price: npt.NDArray[np.float64],
        size: npt.NDArray[np.float64],
        earlier: npt.NDArray[np.bool_] | None,
    ) -> _Sums:
        """The session's running sums through the slice (`TradeSlice.cv` ... `.epv`)."""
        m = len(price)
        sums = np.empty((m + 1, 2))
        sums[0, 0] = self._cv
        sums[0, 1] = self._cpv
        sums[1:, 0] = size
        np.multiply(price, size, out=sums[1:, 1])
        ev = epv = None
        if earlier is not None or self._ev:
            excluded = np.zeros((m + 1, 2))
            excluded[0, 0] = self._ev
            excluded[0, 1] = self._epv
            if earlier is not None:
                excluded[1:][earlier] = sums[1:][earlier]
            np.cumsum(excluded, axis=0, out=excluded)
            ev, epv = excluded[:, 0].tolist(), excluded[:, 1].tolist()
        np.cumsum(sums, axis=0, out=sums)
        return sums[:, 0].tolist(), sums[:, 1].tolist(), ev, epv

    def _sums_scalar(
        self, prices: list[float], sizes: list[float], earlier: npt.NDArray[np.bool_] | None
    ) -> _Sums:
        """`_sums_vector` for a few trades: the same products and left-to-right additions."""
        notional = list(map(operator.mul, prices, sizes))
        cv = list(itertools.accumulate(sizes, initial=self._cv))
        cpv = list(itertools.accumulate(notional, initial=self._cpv))
        if earlier is None and not self._ev:
            return cv, cpv, None, None
        old = [False] * len(prices) if earlier is None else earlier.tolist()
        ev = list(itertools.accumulate(_where(old, sizes), initial=self._ev))
        epv = list(itertools.accumulate(_where(old, notional), initial=self._epv))
        return cv, cpv, ev, epv

    def _row(self, series: _Series, bar: Bar, *, partial: bool) -> Row:
        values, trend = series.indicators.update(bar.close)
        row = {
            "symbol": self.symbol,
            "ts": bar.ts,
            "bar_type": series.kind,
            "bar_size": series.label,
            "open": bar.open,
            "high": bar.high,
            "low": bar.low,
            "close": bar.close,
            "volume": bar.volume,
            "trade_count": bar.trade_count,
            "vwap": bar.vwap,
            "partial": partial,
            "corrections": bar.corrections,
        }
        row.update(zip(series.indicators.columns, values, strict=True))
        row["session_vwap"] = bar.session_vwap
        row["trend"] = trend
        return row
