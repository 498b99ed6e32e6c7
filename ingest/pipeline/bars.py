"""Bar builders: turn trades into OHLCV bars."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["TimeBarBuilder"]

_NS = 1_000_000_000


class TimeBarBuilder:
    """Clock-aligned time bars (a 1-minute bar starts on the minute, UTC)."""

    def __init__(self, seconds: float, label: str) -> None:
        self._width = int(seconds * _NS)
        self._label = label
        self._start: int | None = None
        self._open = self._high = self._low = self._close = 0.0
        self._volume = self._notional = 0.0
        self._count = 0

    def update(
        self,
        ts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        size: npt.NDArray[np.float64],
    ) -> list[dict[str, Any]]:
        """Add trades; return the bars they closed."""
        closed = []
        for t, p, s in zip(ts.tolist(), price.tolist(), size.tolist(), strict=True):
            start = t - t % self._width
            if self._start is not None and start > self._start:
                closed.append(self._bar())
                self._start = None
            if self._start is None:
                self._start = start
                self._open = self._high = self._low = p
                self._volume = self._notional = 0.0
                self._count = 0
            elif start < self._start:
                continue  # late trade for a closed bar: left to the full pipeline
            self._high = max(self._high, p)
            self._low = min(self._low, p)
            self._close = p
            self._volume += s
            self._notional += p * s
            self._count += 1
        return closed

    def flush(self) -> dict[str, Any] | None:
        """The open bar, if any; the builder starts empty afterwards."""
        if self._start is None:
            return None
        bar = self._bar()
        self._start = None
        return bar

    def _bar(self) -> dict[str, Any]:
        return {
            "ts": self._start,
            "bar_type": "time",
            "bar_size": self._label,
            "open": self._open,
            "high": self._high,
            "low": self._low,
            "close": self._close,
            "volume": self._volume,
            "trade_count": self._count,
            "vwap": self._notional / self._volume if self._volume else None,
        }
