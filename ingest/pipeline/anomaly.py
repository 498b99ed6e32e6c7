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
computed from that window's values alone, in a fixed order, so the result for a trade does not
depend on which batch it arrived in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from ingest.config import AnomalySettings

__all__ = ["Anomaly", "AnomalyDetector", "quantile_linear"]

FloatArray = npt.NDArray[np.float64]

_GATHER: dict[int, npt.NDArray[np.intp]] = {}
"""Gather indices by window length, shared by every symbol (read-only, so cache-friendly)."""


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One flagged trade."""

    index: int
    """Position of the trade in the batch given to `AnomalyDetector.detect`."""
    price: float
    zscore: float | None


def quantile_linear(ordered: FloatArray, q: float) -> FloatArray:
    """Quantile `q` of each row of row-sorted `ordered`, as numpy's default "linear" method.

    Written out (rather than `np.quantile`) because it is a third of the cost on small windows;
    the interpolation is numpy's own, including its switch to `b - (b - a) * (1 - t)` above the
    midpoint, so the results are identical.
    """
    position = q * (ordered.shape[1] - 1)
    lo = int(position)
    t = position - lo
    a = ordered[:, lo]
    if t == 0.0:
        return a.copy()
    b = ordered[:, lo + 1]
    out: FloatArray = b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t
    return out


class AnomalyDetector:
    """Flags trades that stand out from the symbol's recent prices."""

    __slots__ = ("_k2_over_n", "_recent", "method", "threshold", "window")

    def __init__(self, settings: AnomalySettings) -> None:
        self.window = settings.window
        self.threshold = settings.threshold
        self.method = settings.method
        self._recent: FloatArray = np.empty(0)
        """The last `window` prices (fewer while filling), oldest first."""
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
        n = self.window
        history = np.concatenate((self._recent, price))
        rows = len(history) - n
        # A view while small (one array allocation a call); a copy when it would pin a big batch.
        self._recent = history[-n:] if len(history) <= 4 * n else history[-n:].copy()
        if rows <= 0:
            return []
        # A C-contiguous copy: each row is summed by the same routine whatever the row count.
        windows = history[self._gather_index(rows)]
        mean = np.add.reduce(windows, axis=1) / n
        deviations = windows - mean[:, None]
        squares = np.add.reduce(deviations * deviations, axis=1)  # n * variance
        current = history[n:]
        distance = current - mean
        if self.method == "zscore":
            # |distance| > k * std, without a square root or division per trade; equal prices
            # (squares == 0) are dropped below, with the z-score computed for the few hits only.
            flagged = np.flatnonzero(distance * distance > squares * self._k2_over_n)
        else:
            ordered = np.sort(windows, axis=1)
            q1 = quantile_linear(ordered, 0.25)
            q3 = quantile_linear(ordered, 0.75)
            fence = (q3 - q1) * self.threshold
            flagged = np.flatnonzero((current < q1 - fence) | (current > q3 + fence))
        offset = len(price) - rows  # trades still filling the window come first
        hits = []
        for r in flagged.tolist():
            spread = float(squares[r])
            z = float(distance[r]) / math.sqrt(spread / n) if spread > 0 else None
            if z is None and self.method == "zscore":
                continue
            hits.append(Anomaly(index=r + offset, price=float(current[r]), zscore=z))
        return hits
