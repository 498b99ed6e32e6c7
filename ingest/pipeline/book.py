"""What the steady step reads and moves on, of many symbols' pipelines, as arrays across them.

At 100k ticks/s offered over 200 symbols a flush touches every symbol with a few trades, and
the steady step (`ingest.pipeline.steady`) moved each one's pipeline on by reading its session,
its anomaly window and its four open bars out of their objects and writing them back: ~9 us a
symbol, one Python attribute at a time, for arithmetic numpy does for all of them in a few calls.

A `SteadyBook` holds that state instead, one array per field across symbols, for the pipelines
it holds. A pipeline is *held* from the flush that first takes it until anything else needs it:
every `SymbolPipeline` method that reads or changes that state first hands it back
(`release`), one symbol's attributes at a time. In between the steady step reads and moves it
in the arrays alone, and opens and closes most bars there too (`ingest.pipeline.closes`). A
batch whose bars its builders must close keeps its symbol held too: the book lends those
series' builders their open bar (`lend`) and reads it back after (`keep`).

What the steady step can change is written back (the session's sums and count, the anomaly
window, and of each series' bar everything `BarBuilder._begin` and `_absorb` set, its time
bucket and late sums); the rest (the session's day and the sums of earlier days' trades) is
read when held and cannot change until released.
"""

from __future__ import annotations

from operator import attrgetter
from typing import TYPE_CHECKING, cast

import numpy as np

from ingest.pipeline.bars import CountBarBuilder, Slices, TimeBarBuilder

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

    from ingest.pipeline.anomaly import AnomalyDetector
    from ingest.pipeline.bars import BarBuilder
    from ingest.pipeline.symbol import SymbolPipeline

__all__ = ["SteadyBook"]

_PER_SLOT = ("day", "seq", "cv", "cpv", "ev", "epv", "recent", "filled")
"""The arrays of one entry (or row) a slot."""
_PER_SERIES = (
    "moved",
    "fixed",
    "n",
    "open",
    "seen",
    "bucket",
    "sv",
    "sv_set",
    "first",
    "start",
    "seq0",
    "fixes",
    "late",
)
"""The arrays of one row a series, their last axis the slot."""
_HELD_SLOT = attrgetter("_slot")
_SESSION = attrgetter("_day", "_cv", "_cpv", "_ev", "_epv", "_seq")
_RECENT = attrgetter("_anomaly._recent")
_BUILDERS = attrgetter("_builders")
_MOVED = attrgetter("_h", "_l", "_c", "_s_end_v", "_s_end_pv")
"""The open bar's floats the steady step moves on, in the order of `SteadyBook.moved`."""
_FIXED = attrgetter("_s0_v", "_s0_pv", "_base_v", "_base_pv")
"""The open bar's floats a count bar's threshold is tested with (fixed while the bar is open)."""
_COUNTS = attrgetter("_n", "_open")
_BEGUN = attrgetter("_o", "_ts", "_seq0", "_fixes")
"""What the open bar's first trade set: open price, start time, sequence number, fixes."""
_LATE = attrgetter("_lv", "_lpv")
"""A time bar's late trades inside its running sums: volume and notional."""
_TIME = attrgetter("_seen", "_bucket")
_SV = attrgetter("_sv")
H, L, C, END_V, END_PV = range(5)
"""The fields of `SteadyBook.moved`, in `_MOVED` order."""
S0_V, S0_PV, BASE_V, BASE_PV = range(4)
"""The fields of `SteadyBook.fixed`, in `_FIXED` order."""


class SteadyBook:
    """The held pipelines' steady state, one slot a symbol; all of one configuration."""

    def __init__(self) -> None:
        self._slots: dict[str, int] = {}
        self._owners: list[SymbolPipeline | None] = []
        self._capacity = 0
        self._detector: AnomalyDetector | None = None
        self._kinds: list[tuple[str, float]] = []
        """Per series: its kind ("time" or a count kind) and its width or threshold."""
        self.day = np.empty(0, np.int64)
        self.seq = np.empty(0, np.int64)
        self.cv = np.empty(0)
        self.cpv = np.empty(0)
        self.ev = np.empty(0)
        self.epv = np.empty(0)
        self.recent = np.empty((0, 0))
        """The anomaly window's last prices, right-aligned: the last `filled` of a row hold them."""
        self.filled = np.empty(0, np.int64)
        self.moved = np.empty((0, 5, 0))
        """Per series, field (`_MOVED`), slot."""
        self.fixed = np.empty((0, 4, 0))
        """Per series, field (`_FIXED`), slot."""
        self.n = np.empty((0, 0), np.int64)
        self.open = np.empty((0, 0), np.bool_)
        self.seen = np.empty((0, 0), np.bool_)
        self.bucket = np.empty((0, 0), np.int64)
        self.sv = np.empty((0, 0))
        """Session VWAP after the open bar's last trade, NaN where there is none (`sv_set`)."""
        self.sv_set = np.empty((0, 0), np.bool_)
        self.first = np.empty((0, 0))
        """The open bar's open price (`_BEGUN`, as are `start`, `seq0` and `fixes`)."""
        self.start = np.empty((0, 0), np.int64)
        self.seq0 = np.empty((0, 0), np.int64)
        self.fixes = np.empty((0, 0), np.int64)
        self.late = np.empty((0, 2, 0))
        """Per series, (volume, notional), slot: a time bar's late trades (`TimeBarBuilder._lv`,
        `_lpv`); zero for the other series."""

    @property
    def kinds(self) -> list[tuple[str, float]]:
        """Per series: its kind ("time" or a count kind) and its width or threshold."""
        return self._kinds

    @property
    def detector(self) -> AnomalyDetector:
        """An anomaly detector of the held pipelines' configuration (for `check_windows`)."""
        assert self._detector is not None, "nothing held yet"
        return self._detector

    def hold(
        self, pipelines: Sequence[SymbolPipeline], first_days: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.intp]:
        """Each pipeline's slot, holding those not yet held; -1 for one that cannot be held.

        A pipeline is held once its session has begun; its anomaly window may still be filling.
        One that has seen no trade yet begins its session on day `first_days[k]` (the UTC day
        of all of its batch), as its first trade would; with -1 (a batch of two days) it is
        not held.
        """
        slots = np.fromiter(map(_HELD_SLOT, pipelines), np.intp, len(pipelines))
        loose = np.flatnonzero(slots < 0)
        if len(loose):
            taking = [pipelines[i] for i in loose.tolist()]
            slots[loose] = self._take(taking, first_days[loose].tolist())
        return slots

    def release(self, pipeline: SymbolPipeline) -> None:
        """Hand a held pipeline its state back: it is the pipeline's own again."""
        slot = pipeline._slot
        pipeline._book = None
        pipeline._slot = -1
        self._owners[slot] = None
        pipeline._day = int(self.day[slot])  # a session the book began, on a first trade
        pipeline._cv = float(self.cv[slot])
        pipeline._cpv = float(self.cpv[slot])
        pipeline._seq = int(self.seq[slot])
        start = self.detector.window - int(self.filled[slot])
        pipeline._anomaly._recent = self.recent[slot, start:].copy()
        for i, builder in enumerate(pipeline._builders):
            _write_moved(builder, self, i, slot)

    def absorbs(self, slots: npt.NDArray[np.intp], slices: Slices) -> npt.NDArray[np.bool_]:
        """Per series and symbol: whether its open bar takes the slice closing nothing.

        `BarBuilder.update`'s common case, for all the symbols at once: a time bar's slice
        falls into its open bucket; a count bar's stays below its threshold.
        """
        takes = np.empty((len(self._kinds), len(slots)), np.bool_)
        for i, (kind, size) in enumerate(self._kinds):
            if kind == "time":
                width = int(size)
                lo = self.bucket[i, slots] * width
                takes[i] = self.seen[i, slots] & (slices.tmin >= lo) & (slices.tmax < lo + width)
                continue
            fixed = self.fixed[i][:, slots]
            if kind == "tick":
                fills = self.n[i, slots] + slices.counts >= int(size)
            elif kind == "volume":
                fills = (slices.end_v - fixed[S0_V]) + fixed[BASE_V] >= size
            else:
                fills = (slices.end_pv - fixed[S0_PV]) + fixed[BASE_PV] >= size
            takes[i] = self.open[i, slots] & ~fills
        return takes

    def session_vwap(self, slots: npt.NDArray[np.intp], slices: Slices) -> npt.NDArray[np.float64]:
        """The session VWAP after each slice; NaN where it has no volume (no VWAP)."""
        volume = slices.end_v - self.ev[slots]
        notional = slices.end_pv - self.epv[slots]
        vwap: npt.NDArray[np.float64] = np.divide(
            notional, volume, out=np.full(len(slots), np.nan), where=volume > 0
        )
        return vwap

    def move_on(
        self,
        slots: npt.NDArray[np.intp],
        slices: Slices,
        vwap: npt.NDArray[np.float64],
        takes: npt.NDArray[np.bool_],
    ) -> None:
        """The session of each slot moves on by its slice; so do the open bars that take it.

        `takes` is `absorbs` for these slots: the bars that close are left to `lend`,
        `SymbolPipeline.close_bars` and `keep`. An open bar extends as `BarBuilder.extend`
        does: a new high only when above the old one, and so on (numpy's `maximum` would
        differ on signed zeros).
        """
        self.cv[slots] = slices.end_v
        self.cpv[slots] = slices.end_pv
        self.seq[slots] += slices.counts
        # Every series at once, (series, slot) grids: where a series' bar does not take its
        # slice, each field keeps its value.
        moved = self.moved[:, :, slots]
        high, low = moved[:, H], moved[:, L]
        np.copyto(high, slices.high, where=takes & (slices.high > high))
        np.copyto(low, slices.low, where=takes & (slices.low < low))
        np.copyto(moved[:, C], slices.last, where=takes)
        np.copyto(moved[:, END_V], slices.end_v, where=takes)
        np.copyto(moved[:, END_PV], slices.end_pv, where=takes)
        self.moved[:, :, slots] = moved
        self.n[:, slots] += np.where(takes, slices.counts, 0)
        sv, sv_set = self.sv[:, slots], self.sv_set[:, slots]
        np.copyto(sv, vwap, where=takes)
        np.copyto(sv_set, ~np.isnan(vwap), where=takes)
        self.sv[:, slots], self.sv_set[:, slots] = sv, sv_set

    def lend(self, slot: int, series: Sequence[int], pipeline: SymbolPipeline) -> None:
        """Give these series' builders of a held pipeline their open bars, to close some."""
        for i in series:
            _write_moved(pipeline._builders[i], self, i, slot)

    def keep(self, slot: int, series: Sequence[int], pipeline: SymbolPipeline) -> None:
        """Take back the open bars `lend` gave, as the builders left them.

        One builder at a time, by item: `_read_series`'s array calls cost more for one.
        """
        for i in series:
            builder = pipeline._builders[i]
            self.moved[i][:, slot] = _MOVED(builder)
            self.fixed[i][:, slot] = _FIXED(builder)
            self.n[i, slot], self.open[i, slot] = _COUNTS(builder)
            if self._kinds[i][0] == "time":
                self.seen[i, slot], self.bucket[i, slot] = _TIME(builder)
            sv = builder._sv
            self.sv_set[i, slot] = sv is not None
            self.sv[i, slot] = np.nan if sv is None else sv
            begun = _BEGUN(builder)
            self.first[i, slot], self.start[i, slot] = begun[0], begun[1]
            self.seq0[i, slot], self.fixes[i, slot] = begun[2], begun[3]
            if self._kinds[i][0] == "time":
                self.late[i, :, slot] = _LATE(builder)

    def _take(self, pipelines: list[SymbolPipeline], first_days: list[int]) -> list[int]:
        """Hold these pipelines (each not held): read their state into their slots."""
        sessions = list(map(_SESSION, pipelines))
        for i, (day, *rest) in enumerate(sessions):
            if day is None and first_days[i] >= 0:
                # No trade yet: the session a first trade of that day begins (sums at zero).
                sessions[i] = (first_days[i], 0.0, 0.0, 0.0, 0.0, rest[-1])
        recents = list(map(_RECENT, pipelines))
        if self._detector is None:
            self._configure(pipelines[0])
        window = self.detector.window
        out = [-1] * len(pipelines)
        chosen = [i for i, (day, *_) in enumerate(sessions) if day is not None]
        if not chosen:
            return out
        slots = [self._slot_of(pipelines[i]) for i in chosen]
        for i, slot in zip(chosen, slots, strict=True):
            out[i] = slot
        where = np.array(slots, np.intp)
        day, cv, cpv, ev, epv, seq = zip(*(sessions[i] for i in chosen), strict=True)
        self.day[where], self.seq[where] = day, seq
        self.cv[where], self.cpv[where], self.ev[where], self.epv[where] = cv, cpv, ev, epv
        filled = [len(recents[i]) for i in chosen]
        self.filled[where] = filled
        for slot, i, n in zip(slots, chosen, filled, strict=True):
            self.recent[slot, window - n :] = recents[i]  # right-aligned: a filling window too
        held = [pipelines[i] for i in chosen]
        for s, series in enumerate(zip(*map(_BUILDERS, held), strict=True)):
            self._read_series(s, where, series)
        for pipeline, slot in zip(held, slots, strict=True):
            pipeline._book = self
            pipeline._slot = slot
            self._owners[slot] = pipeline
        return out

    def _read_series(
        self, s: int, where: npt.NDArray[np.intp], builders: Sequence[BarBuilder]
    ) -> None:
        """Read series `s`'s open bar of each of these builders into its slot."""
        self.moved[s][:, where] = np.array(list(map(_MOVED, builders))).T
        self.fixed[s][:, where] = np.array(list(map(_FIXED, builders))).T
        self.n[s, where], self.open[s, where] = zip(*map(_COUNTS, builders), strict=True)
        if self._kinds[s][0] == "time":
            self.seen[s, where], self.bucket[s, where] = zip(*map(_TIME, builders), strict=True)
        sv = list(map(_SV, builders))
        self.sv_set[s, where] = [v is not None for v in sv]
        self.sv[s, where] = [np.nan if v is None else v for v in sv]
        begun = list(zip(*map(_BEGUN, builders), strict=True))
        self.first[s, where], self.start[s, where] = begun[0], begun[1]
        self.seq0[s, where], self.fixes[s, where] = begun[2], begun[3]
        if self._kinds[s][0] == "time":
            self.late[s][:, where] = np.array(list(map(_LATE, builders))).T
        else:
            self.late[s][:, where] = 0.0

    def _slot_of(self, pipeline: SymbolPipeline) -> int:
        """The symbol's slot; a pipeline it replaced (after a failure) is released first."""
        slot = self._slots.get(pipeline.symbol)
        if slot is None:
            slot = self._slots[pipeline.symbol] = len(self._slots)
            if slot >= self._capacity:
                self._grow(max(64, 2 * self._capacity))
            self._owners.append(None)
        owner = self._owners[slot]
        if owner is not None:
            self.release(owner)
        return slot

    def _configure(self, pipeline: SymbolPipeline) -> None:
        self._detector = pipeline._anomaly
        self._kinds = [
            ("time", b._width) if isinstance(b, TimeBarBuilder) else (b._kind, b._threshold)
            for b in cast("list[TimeBarBuilder | CountBarBuilder]", pipeline._builders)
        ]
        self.recent = np.empty((0, self._detector.window))
        series = len(self._kinds)
        for name in _PER_SERIES:  # (series, [field,] slot), as `__init__` shapes them
            old = getattr(self, name)
            setattr(self, name, np.empty((series, *old.shape[1:]), old.dtype))

    def _grow(self, capacity: int) -> None:
        """Room for `capacity` slots; the held slots keep their values."""
        extra = capacity - self._capacity
        for name in _PER_SLOT:
            old = getattr(self, name)
            setattr(self, name, np.concatenate((old, np.zeros((extra, *old.shape[1:]), old.dtype))))
        for name in _PER_SERIES:
            old = getattr(self, name)
            pad = np.zeros((*old.shape[:-1], extra), old.dtype)
            setattr(self, name, np.concatenate((old, pad), axis=-1))
        self._capacity = capacity


def _write_moved(builder: BarBuilder, book: SteadyBook, series: int, slot: int) -> None:
    """Set what the steady step changes of one open bar from its slot in the book."""
    h, lo, c, end_v, end_pv = book.moved[series][:, slot].tolist()
    builder._h = h
    builder._l = lo
    builder._c = c
    builder._s_end_v = end_v
    builder._s_end_pv = end_pv
    builder._s0_v, builder._s0_pv, builder._base_v, builder._base_pv = book.fixed[series][
        :, slot
    ].tolist()
    builder._n = int(book.n[series, slot])
    builder._open = bool(book.open[series, slot])
    builder._sv = float(book.sv[series, slot]) if book.sv_set[series, slot] else None
    builder._o = float(book.first[series, slot])
    builder._ts = int(book.start[series, slot])
    builder._seq0 = int(book.seq0[series, slot])
    builder._fixes = int(book.fixes[series, slot])
    if isinstance(builder, TimeBarBuilder):
        builder.late_mask = None
        builder._lv, builder._lpv = book.late[series][:, slot].tolist()
        builder._seen = bool(book.seen[series, slot])
        builder._bucket = int(book.bucket[series, slot])
