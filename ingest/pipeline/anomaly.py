"""Tick-level anomaly detection: each trade price against the previous `window` prices.

Two methods (`[pipeline] anomaly.method`):

* ``zscore``: ``z = (price - mean) / std`` over the previous `window` prices (population std);
  flagged when ``|price - mean| > threshold * std`` (that is ``|z| > threshold``; tested in
  squared form, so a z-score within an ulp or two of the threshold may fall either way). A
  window of equal prices has no spread, so no z-score and no flag.
* ``iqr``: flagged when the price is outside ``[Q1 - k * IQR, Q3 + k * IQR]`` with
  ``k = threshold`` and numpy's default (linear) quartiles of the previous `window` prices; the
  row reports the z-score too (None when the window has no spread).

The first `window` trades of a symbol only fill the window. Each window's statistics are
computed from that window's values alone, in a fixed order (numpy's pairwise sum, which the
plain-Python path for small batches follows), so the result for a trade does not depend on
which batch it arrived in.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from ingest.config import AnomalySettings

__all__ = ["Anomaly", "AnomalyDetector", "quantile_linear", "window_sums"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_GATHER: dict[int, npt.NDArray[np.intp]] = {}
"""Gather indices by window length, shared by every symbol (read-only, so cache-friendly)."""


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One flagged trade."""

    index: int
    """Position of the trade in the batch given to `AnomalyDetector.detect`."""
    price: float
    zscore: float | None


SCALAR_WORK = 160
"""A batch is checked in plain Python, window by window, when `len(batch) * (window + 8)` is at
most this.

The Python path costs about `window + 8` additions' worth a trade (~1 us a trade with the
default window of 20, `window_sums`), numpy's a fixed ~6 us a batch (~12 us for `iqr`). The
crossover, measured for windows of 5, 20 and 50 and both methods: ~12, ~6 and ~3 trades (it was
60, 2 trades with the default window, while the sums were a loop). Both paths give identical
results: the tests force either one and compare them.
"""

_T = TypeVar("_T", float, FloatArray)


def _interpolate(a: _T, b: _T, t: float) -> _T:
    """The "linear" quantile between sorted neighbours `a` and `b`, for one window or many.

    numpy's own formula, including its switch to `b - (b - a) * (1 - t)` above the midpoint.
    """
    return b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t


def _position(q: float, count: int) -> tuple[int, float]:
    """Index of the lower neighbour of quantile `q` of `count` sorted values, and the fraction."""
    position = q * (count - 1)
    lo = int(position)
    return lo, position - lo


def quantile_linear(ordered: FloatArray, q: float) -> FloatArray:
    """Quantile `q` of each row of row-sorted `ordered`, as numpy's default "linear" method.

    Written out (rather than `np.quantile`) because it is a third of the cost on small windows;
    the interpolation is numpy's own, so the results are identical.
    """
    lo, t = _position(q, ordered.shape[1])
    a = ordered[:, lo]
    if t == 0.0:
        return a.copy()
    return _interpolate(a, ordered[:, lo + 1], t)


def _quantile_sorted(ordered: list[float], q: float) -> float:
    """`quantile_linear` of one sorted window."""
    lo, t = _position(q, len(ordered))
    return ordered[lo] if t == 0.0 else _interpolate(ordered[lo], ordered[lo + 1], t)


WindowSum = Callable[[list[float]], float]
SpreadSum = Callable[[list[float], float], float]


@functools.cache
def window_sums(n: int) -> tuple[WindowSum, SpreadSum]:
    """`np.add.reduce` of a window of `n` Python floats, and of its squared deviations from `m`.

    The scalar path's window statistics must round exactly as the vector path's, so both follow
    numpy's order of additions. They are generated once per window length as straight-line code
    (`_pairwise_sum`): the order spelled out runs ~5x faster than a loop over the window that
    follows it (a window of 20: 1.46 -> 0.31 us; its squared deviations 2.5 -> 0.73 us).
    """
    names = [f"v{i}" for i in range(n)]
    unpack = ", ".join(names) + ","
    deviations = [f"(({v} - m) * ({v} - m))" for v in names]
    source = (
        f"def total(w):\n    {unpack} = w\n    return 0.0 + {_pairwise_sum(names)}\n"
        f"def spread(w, m):\n    {unpack} = w\n    return 0.0 + {_pairwise_sum(deviations)}\n"
    )
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # the source is built from `n` alone
    return namespace["total"], namespace["spread"]


def _pairwise_sum(terms: list[str]) -> str:
    """Numpy's pairwise sum of `terms` (expressions, in order) as one parenthesised expression.

    Numpy adds a contiguous float64 run (after its identity, 0.0) like this: below 8 values, one
    after the other from 0.0; up to 128, eight running partial sums over blocks of 8, combined in
    pairs, then the tail one by one; above that, two halves cut at a multiple of 8.
    """
    n = len(terms)
    if n < 8:
        total = "0.0"
        for term in terms:
            total = f"({total} + {term})"
        return total
    if n > 128:
        half = n // 2
        half -= half % 8
        return f"({_pairwise_sum(terms[:half])} + {_pairwise_sum(terms[half:])})"
    partial = terms[:8]
    end = n - n % 8
    for block in range(8, end, 8):
        partial = [f"({partial[j]} + {terms[block + j]})" for j in range(8)]
    r = partial
    total = f"((({r[0]} + {r[1]}) + ({r[2]} + {r[3]})) + (({r[4]} + {r[5]}) + ({r[6]} + {r[7]})))"
    for term in terms[end:]:
        total = f"({total} + {term})"
    return total


class AnomalyDetector:
    """Flags trades that stand out from the symbol's recent prices."""

    __slots__ = ("_k2_over_n", "_recent", "method", "threshold", "window")

    def __init__(self, settings: AnomalySettings) -> None:
        self.window = settings.window
        self.threshold = settings.threshold
        self.method = settings.method
        self._recent: FloatArray | list[float] = []
        """The last `window` prices (fewer while filling), oldest first: an array after a batch
        checked by numpy, a list after one checked in Python."""
        self._k2_over_n = settings.threshold * settings.threshold / settings.window

    def _gather_index(self, rows: int) -> npt.NDArray[np.intp]:
        """Row `r` is `[r, r + window)`: the positions of window `r` in the history array."""
        index = _GATHER.get(self.window)
        if index is None or len(index) < rows:
            size = max(rows, 2 * (0 if index is None else len(index)), 64)
            index = np.arange(size)[:, None] + np.arange(self.window)[None, :]
            _GATHER[self.window] = index
        return index[:rows]

    def detect(self, price: FloatArray) -> list[Anomaly]:
        """Check a batch of prices (arrival order) against their previous `window` prices."""
        if len(price) * (self.window + 8) <= SCALAR_WORK:
            return self._detect_scalar(price.tolist())
        n = self.window
        history = np.concatenate((self._recent, price))
        rows = len(history) - n
        # A view while small (one array allocation a call); a copy when it would pin a big batch.
        self._recent = history[-n:] if len(history) <= 4 * n else history[-n:].copy()
        if rows <= 0:
            return []
        # A C-contiguous copy: each row is summed by the same routine whatever the row count.
        windows = history[self._gather_index(rows)]
        offset = len(price) - rows  # trades still filling the window come first
        return self.check_windows(windows, history[n:], offset)

    def check_windows(
        self, windows: FloatArray, current: FloatArray, offset: int = 0
    ) -> list[Anomaly]:
        """Flag each price of `current` that stands out from its row of `windows`.

        `windows` is C-contiguous, one row of `window` prices per price checked (so each row is
        summed by the same routine whatever the row count). A hit's index is its row plus
        `offset`. `detect` checks one symbol's batch this way, `ingest.pipeline.steady` many
        symbols' at once.
        """
        n = self.window
        mean = np.add.reduce(windows, axis=1) / n
        deviations = windows - mean[:, None]
        squares = np.add.reduce(deviations * deviations, axis=1)  # n * variance
        distance = current - mean
        if self.method == "zscore":
            # |distance| > k * std, without a square root or division per trade; equal prices
            # (squares == 0) are dropped below, with the z-score computed for the few hits only.
            flagged = self._outside_z(distance, squares).nonzero()[0]
        else:
            ordered = np.sort(windows, axis=1)
            q1 = quantile_linear(ordered, 0.25)
            q3 = quantile_linear(ordered, 0.75)
            flagged = self._outside_iqr(current, q1, q3).nonzero()[0]
        hits = []
        for r in flagged.tolist():
            hit = self._hit(r + offset, float(current[r]), float(distance[r]), float(squares[r]))
            if hit is not None:
                hits.append(hit)
        return hits

    @property
    def recent(self) -> FloatArray | list[float]:
        """The last `window` prices seen (fewer while filling), oldest first."""
        return self._recent

    def slide(self, recent: FloatArray) -> None:
        """Take the last `window` prices after a batch checked elsewhere (`check_windows`)."""
        self._recent = recent

    def _detect_scalar(self, prices: list[float]) -> list[Anomaly]:
        """`detect` for a few prices: the same arithmetic, window by window, on Python floats."""
        n = self.window
        recent = self._recent
        history = recent if isinstance(recent, list) else recent.tolist()
        history += prices
        rows = len(history) - n
        hits = []
        total, spread = window_sums(n)
        for r in range(rows):
            window = history[r : r + n]
            mean = total(window) / n
            squares = spread(window, mean)
            current = history[r + n]
            distance = current - mean
            if self.method == "zscore":
                outside = self._outside_z(distance, squares)
            else:
                # May order 0.0 and -0.0 unlike np.sort: a quartile's zero then differs in sign
                # only, which no comparison below can see.
                ordered = sorted(window)
                q1 = _quantile_sorted(ordered, 0.25)
                q3 = _quantile_sorted(ordered, 0.75)
                outside = self._outside_iqr(current, q1, q3)
            if outside:
                hit = self._hit(r + len(prices) - rows, current, distance, squares)
                if hit is not None:
                    hits.append(hit)
        if rows > 0:
            del history[:rows]
        self._recent = history
        return hits

    @overload
    def _outside_z(self, distance: float, squares: float) -> bool: ...
    @overload
    def _outside_z(self, distance: FloatArray, squares: FloatArray) -> BoolArray: ...
    def _outside_z(self, distance: _T, squares: _T) -> bool | BoolArray:
        """The z-score test of one trade or of a batch's (see `detect`)."""
        return distance * distance > squares * self._k2_over_n

    @overload
    def _outside_iqr(self, current: float, q1: float, q3: float) -> bool: ...
    @overload
    def _outside_iqr(self, current: FloatArray, q1: FloatArray, q3: FloatArray) -> BoolArray: ...
    def _outside_iqr(self, current: _T, q1: _T, q3: _T) -> bool | BoolArray:
        """The fence test of one trade or of a batch's."""
        fence = (q3 - q1) * self.threshold
        return (current < q1 - fence) | (current > q3 + fence)

    def _hit(self, index: int, price: float, distance: float, spread: float) -> Anomaly | None:
        """The flagged trade's row; None for a z-score flag on a window without spread."""
        z = distance / math.sqrt(spread / self.window) if spread > 0 else None
        if z is None and self.method == "zscore":
            return None
        return Anomaly(index=index, price=price, zscore=z)
