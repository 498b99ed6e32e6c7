"""Sliding windows and online statistics, the building blocks of indicators and anomaly checks.

Three tools, each for a different access pattern:

* `RingBuffer` keeps the last `capacity` values of an unbounded stream with O(1) append and
  eviction, and hands out the window as one contiguous array without copying (every value is
  stored twice, at `i` and `i + capacity`, so the window never wraps).
* `windowed` gives strided windows over an array as a view, for batch work.
* `RunningStats` is Welford's online mean and variance (plus count, min and max). It stays exact
  to the last few ulps over millions of values with a large common offset (prices near 1e9 that
  move by cents), where the textbook `E[x^2] - E[x]^2` loses every significant digit.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["RingBuffer", "RunningStats", "windowed"]

FloatArray = npt.NDArray[np.float64]


class RingBuffer:
    """The last `capacity` floats of a stream; the oldest value is evicted on overflow."""

    __slots__ = ("_buf", "_cap", "_end", "_len")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            msg = f"capacity must be >= 1, got {capacity!r}"
            raise ValueError(msg)
        self._cap = capacity
        self._buf: FloatArray = np.zeros(2 * capacity, dtype=np.float64)
        self._end = 0
        """Slot (mod capacity) the next value goes to."""
        self._len = 0

    @property
    def capacity(self) -> int:
        """How many values the window holds when full."""
        return self._cap

    @property
    def full(self) -> bool:
        """Whether the window holds `capacity` values (warm-up is over)."""
        return self._len == self._cap

    def __len__(self) -> int:
        return self._len

    def append(self, value: float) -> None:
        """Add one value, evicting the oldest when full. O(1)."""
        end = self._end
        self._buf[end] = value
        self._buf[end + self._cap] = value
        self._end = (end + 1) % self._cap
        if self._len < self._cap:
            self._len += 1

    def extend(self, values: FloatArray) -> None:
        """Add many values in order; only the last `capacity` of them can survive."""
        cap = self._cap
        k = len(values)
        if k >= cap:
            tail = values[k - cap :]
            self._buf[:cap] = tail
            self._buf[cap:] = tail
            self._end = 0
            self._len = cap
            return
        end = self._end
        first = min(k, cap - end)
        self._buf[end : end + first] = values[:first]
        self._buf[end + cap : end + cap + first] = values[:first]
        rest = k - first
        if rest:
            self._buf[:rest] = values[first:]
            self._buf[cap : cap + rest] = values[first:]
        self._end = (end + k) % cap
        self._len = min(self._len + k, cap)

    def view(self) -> FloatArray:
        """The window, oldest first, as a read-only view (valid until the next write)."""
        start = (self._end - self._len) % self._cap
        out = self._buf[start : start + self._len]
        out.flags.writeable = False
        return out

    def __getitem__(self, index: int) -> float:
        """Value `index` of the window (0 is the oldest, -1 the newest)."""
        if not -self._len <= index < self._len:
            msg = f"index {index} out of range for a window of {self._len}"
            raise IndexError(msg)
        start = (self._end - self._len) % self._cap
        return float(self._buf[start + index % self._len])


def windowed(values: FloatArray, size: int, stride: int = 1) -> FloatArray:
    """Every `stride`-th window of `size` consecutive values, as a read-only 2-D view.

    Row `i` is `values[i * stride : i * stride + size]`. No data is copied, so this is the cheap
    way to run a per-window computation over a whole batch; fewer than `size` values give no rows.
    """
    if size < 1 or stride < 1:
        msg = f"size and stride must be >= 1, got size={size!r}, stride={stride!r}"
        raise ValueError(msg)
    if len(values) < size:
        return np.empty((0, size), dtype=np.float64)
    return sliding_window_view(values, size)[::stride]


class RunningStats:
    """Count, mean, variance (Welford), min and max of everything pushed so far.

    Batches merge with Chan et al.'s parallel formula, so `push_many` and repeated `push` agree
    to rounding and neither depends on the magnitude of the values, only on their spread.
    """

    __slots__ = ("_m2", "count", "maximum", "mean", "minimum")

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf

    def push(self, value: float) -> None:
        """Add one value in O(1)."""
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (value - self.mean)
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)

    def push_many(self, values: FloatArray) -> None:
        """Add a batch: its two-pass statistics, merged into the running ones."""
        n = len(values)
        if n == 0:
            return
        batch_mean = float(values.mean())
        batch_m2 = float(np.square(values - batch_mean).sum())
        self._merge(n, batch_mean, batch_m2, float(values.min()), float(values.max()))

    def merge(self, other: RunningStats) -> None:
        """Fold another accumulator into this one (e.g. statistics of two shards)."""
        if other.count:
            self._merge(other.count, other.mean, other._m2, other.minimum, other.maximum)

    def _merge(self, n: int, mean: float, m2: float, lo: float, hi: float) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self._m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.minimum = min(self.minimum, lo)
        self.maximum = max(self.maximum, hi)

    @property
    def variance(self) -> float | None:
        """Population variance; None before the first value."""
        return self._m2 / self.count if self.count else None

    @property
    def sample_variance(self) -> float | None:
        """Sample (n - 1) variance; None before the second value."""
        return self._m2 / (self.count - 1) if self.count > 1 else None

    @property
    def std(self) -> float | None:
        """Population standard deviation; None before the first value."""
        variance = self.variance
        return math.sqrt(variance) if variance is not None else None
