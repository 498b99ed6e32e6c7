"""Indicators on one bar series' closes, with TA-Lib's definitions and warm-up lengths.

Bars are rare next to trades, so this is plain Python on floats, one `update` per closed bar.
Every value is None until its window is full; after that it matches TA-Lib (SMA, EMA, RSI, MOM)
or numpy's population standard deviation (volatility, z-score) to rounding:

==============  ===============================================  ======================
column          definition                                       first value (bar index)
==============  ===============================================  ======================
sma_n           mean of the last n closes                        n - 1
ema_n           seeded with sma_n of the first n closes, then    n - 1
                ``ema += (close - ema) * 2 / (n + 1)``
rsi_n           Wilder: gains and losses averaged over the       n
                first n changes, then smoothed by (n - 1) / n
volatility_n    population std of the last n log returns         n
momentum_n      close - close n bars ago                         n
zscore_n        (close - sma_n) / population std of n closes     n - 1
==============  ===============================================  ======================

Two deliberate differences from TA-Lib, both where TA-Lib would invent a number: RSI is None
(TA-Lib: 0) when the average gain and loss are both zero, and the z-score is None when the
closes in its window are all equal.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, cast

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from ingest.config import PipelineSettings

__all__ = ["IndicatorState", "indicator_columns", "session_vwap_hlc3"]

_DAY_NS = 86_400 * 1_000_000_000


def indicator_columns(settings: PipelineSettings) -> tuple[str, ...]:
    """Float indicator columns of the `bars` table, named after their windows (`sma_20`)."""
    return (
        *(f"sma_{n}" for n in settings.sma),
        *(f"ema_{n}" for n in settings.ema),
        f"rsi_{settings.rsi}",
        f"volatility_{settings.volatility}",
        f"momentum_{settings.momentum}",
        f"zscore_{settings.zscore}",
    )


def _mean_pstd(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation of a short window, two-pass (no drift).

    `math.hypot` sums the squared deviations with extended precision, and is the fastest way
    to do so in pure Python.
    """
    n = len(values)
    mean = sum(values) / n
    return mean, math.hypot(*[v - mean for v in values]) / math.sqrt(n)


class IndicatorState:
    """Indicator history of one bar series; `update` takes each closed bar's close."""

    __slots__ = (
        "_closes",
        "_count",
        "_ema",
        "_ema_n",
        "_gain",
        "_keep",
        "_loss",
        "_mom_n",
        "_returns",
        "_rsi_n",
        "_sma",
        "_trend_at",
        "_trend_fast",
        "_trend_slow",
        "_trend_sma",
        "_vol_n",
        "_z_from_sma",
        "_z_n",
        "columns",
    )

    def __init__(self, settings: PipelineSettings) -> None:
        self._sma = tuple(settings.sma)
        self._ema_n = tuple(settings.ema)
        self._rsi_n = settings.rsi
        self._vol_n = settings.volatility
        self._mom_n = settings.momentum
        self._z_n = settings.zscore
        self.columns = indicator_columns(settings)
        self._keep = max((*self._sma, *self._ema_n, self._z_n, self._mom_n + 1, 1))
        self._closes: list[float] = []
        """The last `_keep` closes (up to twice that before a trim, which keeps appends O(1))."""
        self._count = 0
        self._ema: list[float | None] = [None] * len(self._ema_n)
        self._gain = self._loss = 0.0
        self._returns: list[float] = []
        """Log returns since the last non-positive close, trimmed like `_closes`."""
        self._z_from_sma = self._sma.index(self._z_n) if self._z_n in self._sma else None
        # Trend inputs: the spec's sma_20, ema_12 and ema_26, or the nearest configured windows.
        self._trend_sma = (20 if 20 in self._sma else max(self._sma)) if self._sma else None
        distinct = sorted(set(self._ema_n))
        self._trend_fast = (12 if 12 in distinct else distinct[0]) if len(distinct) > 1 else None
        self._trend_slow = (26 if 26 in distinct else distinct[-1]) if len(distinct) > 1 else None
        self._trend_at: tuple[int, int, int] | None = None
        """Positions of the trend's SMA, fast EMA and slow EMA in the values list."""
        if self._trend_sma and self._trend_fast and self._trend_slow:
            self._trend_at = (
                self._sma.index(self._trend_sma),
                len(self._sma) + self._ema_n.index(self._trend_fast),
                len(self._sma) + self._ema_n.index(self._trend_slow),
            )

    def update(self, close: float) -> tuple[list[float | None], str | None]:
        """Advance by one bar; its indicator values in `columns` order, and its trend label."""
        closes = self._closes
        previous = closes[-1] if closes else None
        closes.append(close)
        if len(closes) > 2 * self._keep:
            del closes[: -self._keep]
        self._count += 1
        count = self._count
        values: list[float | None] = [
            sum(closes[-n:]) / n if count >= n else None for n in self._sma
        ]
        for i, n in enumerate(self._ema_n):
            ema = self._ema[i]
            if ema is not None:
                ema = (close - ema) * (2.0 / (n + 1)) + ema
            elif count == n:
                ema = sum(closes[-n:]) / n
            self._ema[i] = ema
            values.append(ema)
        rsi = self._update_rsi(close, previous)
        values.append(rsi)
        values.append(self._update_volatility(close, previous))
        values.append(close - closes[-1 - self._mom_n] if count > self._mom_n else None)
        values.append(self._zscore(close, values))
        return values, self._trend(close, rsi, values)

    def _update_rsi(self, close: float, previous: float | None) -> float | None:
        n = self._rsi_n
        if previous is None:
            return None
        change = close - previous
        gain, loss = (change, 0.0) if change > 0 else (0.0, -change)
        if self._count <= n + 1:  # TA-Lib: plain sums of the first n changes, then / n
            self._gain += gain
            self._loss += loss
            if self._count < n + 1:
                return None
            self._gain /= n
            self._loss /= n
        else:
            self._gain = (self._gain * (n - 1) + gain) / n
            self._loss = (self._loss * (n - 1) + loss) / n
        total = self._gain + self._loss
        return 100.0 * (self._gain / total) if total != 0 else None

    def _update_volatility(self, close: float, previous: float | None) -> float | None:
        if previous is None:
            return None
        returns = self._returns
        if previous > 0 and close > 0:
            returns.append(math.log(close / previous))
            if len(returns) > 2 * self._vol_n:
                del returns[: -self._vol_n]
        else:
            returns.clear()  # no log return across a non-positive price: warm up again
        n = self._vol_n
        return _mean_pstd(returns[-n:])[1] if len(returns) >= n else None

    def _zscore(self, close: float, values: list[float | None]) -> float | None:
        n = self._z_n
        if self._count < n:
            return None
        window = self._closes[-n:]
        if self._z_from_sma is None:
            mean, std = _mean_pstd(window)
        else:
            mean = cast("float", values[self._z_from_sma])  # the same window's SMA, reused
            std = math.hypot(*[v - mean for v in window]) / math.sqrt(n)
        return (close - mean) / std if std > 0 else None

    def _trend(
        self,
        close: float,
        rsi: float | None,
        values: list[float | None],
    ) -> str | None:
        if self._trend_at is None:
            return None
        at_sma, at_fast, at_slow = self._trend_at
        sma, fast, slow = values[at_sma], values[at_fast], values[at_slow]
        if sma is None or fast is None or slow is None or self._count <= self._rsi_n:
            return None  # some input is still warming up
        if rsi is not None and rsi >= 70.0:
            return "OVERBOUGHT"
        if rsi is not None and rsi <= 30.0:
            return "OVERSOLD"
        if close > sma and fast > slow:
            return "BULLISH"
        if close < sma and fast < slow:
            return "BEARISH"
        return "NEUTRAL"


def session_vwap_hlc3(
    ts: npt.NDArray[np.int64],
    high: npt.NDArray[np.float64],
    low: npt.NDArray[np.float64],
    close: npt.NDArray[np.float64],
    volume: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Bar-level session VWAP: volume-weighted (H + L + C) / 3, restarting each UTC day.

    The pipeline itself reports the exact trade-level session VWAP; this is the approximation
    charting tools draw from bars alone, kept for comparisons. NaN where the day has no volume yet.
    """
    typical = (high + low + close) / 3.0
    out = np.full(len(ts), np.nan)
    days = ts // _DAY_NS
    starts = [0, *(np.flatnonzero(days[1:] != days[:-1]) + 1).tolist(), len(ts)]
    for start, end in itertools.pairwise(starts):
        notional = np.cumsum(typical[start:end] * volume[start:end])
        shares = np.cumsum(volume[start:end])
        np.divide(notional, shares, out=out[start:end], where=shares > 0)
    return out
