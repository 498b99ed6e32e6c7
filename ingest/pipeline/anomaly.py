"""Tick-level anomaly detection: each trade price against the previous `window` prices.

Two methods (`[pipeline] anomaly.method`):

* ``zscore``: ``z = (price - mean) / std`` over the previous `window` prices (population std);
  flagged when ``|z| > threshold``. A window of equal prices has no spread, so no z-score and
  no flag.
* ``iqr``: flagged when the price is outside ``[Q1 - k * IQR, Q3 + k * IQR]`` with
  ``k = threshold`` and numpy's default (linear) quartiles of the previous `window` prices; the
  row reports the z-score too (None when the window has no spread).

The first `window` trades of a symbol only fill the window. Each window's statistics are
computed from that window's values alone, in a fixed order, so the result for a trade does not
depend on which batch it arrived in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ingest.pipeline.windows import RingBuffer

if TYPE_CHECKING:
    from ingest.config import AnomalySettings

__all__ = ["Anomaly", "AnomalyDetector", "quantile_linear"]

FloatArray = npt.NDArray[np.float64]


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

    def __init__(self, settings: AnomalySettings) -> None:
        self.window = settings.window
        self.threshold = settings.threshold
        self.method = settings.method
        self._recent = RingBuffer(settings.window)
        self._index = np.zeros((0, settings.window), dtype=np.intp)

    def _gather_index(self, rows: int) -> npt.NDArray[np.intp]:
        """Row `r` is `[r, r + window)`: the positions of window `r` in the history array."""
        if len(self._index) < rows:
            size = max(rows, 2 * len(self._index), 64)
            self._index = np.arange(size)[:, None] + np.arange(self.window)[None, :]
        return self._index[:rows]

    def detect(self, price: FloatArray) -> list[Anomaly]:
        """Check a batch of prices (arrival order) against their previous `window` prices."""
        n = self.window
        recent = self._recent.view()
        history = np.concatenate((recent, price))
        rows = len(history) - n
        self._recent.extend(price)
        if rows <= 0:
            return []
        # A C-contiguous copy: each row is summed by the same routine whatever the row count.
        windows = history[self._gather_index(rows)]
        mean = np.add.reduce(windows, axis=1) / n
        deviations = windows - mean[:, None]
        std = np.sqrt(np.add.reduce(deviations * deviations, axis=1) / n)
        current = history[n:]
        spread = std > 0
        z = np.divide(current - mean, std, out=np.zeros(rows), where=spread)
        if self.method == "zscore":
            flagged = np.flatnonzero(np.abs(z) > self.threshold)
        else:
            ordered = np.sort(windows, axis=1)
            q1 = quantile_linear(ordered, 0.25)
            q3 = quantile_linear(ordered, 0.75)
            fence = (q3 - q1) * self.threshold
            flagged = np.flatnonzero((current < q1 - fence) | (current > q3 + fence))
        offset = len(price) - rows  # trades still filling the window come first
        return [
            Anomaly(
                index=int(r) + offset,
                price=float(current[r]),
                zscore=float(z[r]) if spread[r] else None,
            )
            for r in flagged.tolist()
        ]
