"""Trade corrections and cancels (stocks): applied to open bars, a stated policy for closed ones.

Alpaca sends a correction (`c`: original and corrected id, price, size) or a cancel / error
(`x`: the trade's id, price, size) some time after the trade. Each is always written to its table
(`corrections`, `cancels`); what it did to our bars is written next to it, in `applied`:

* `open_bar` -- every bar series' open bar that holds the trade was recomputed from its
  remembered trades with the correction applied (a cancel removes the trade), so the bar is
  emitted right; its `corrections` column counts such fixes;
* `partial` -- some series' open bars were recomputed; in the others the bar holding the trade
  had already closed (or the trade was late for that time series and in no bar);
* `closed_bar` -- every bar holding the trade had closed. Closed bars are never rewritten (they
  were published and fed the indicators); the correction row is the record to reconcile from;
* `not_found` -- the trade is not among the symbol's last `[pipeline] correction_window` trades
  (it predates this process, or is older than the window): nothing was recomputed.

Only stock trades are remembered: per batch, the columns the pipeline was fed plus the ids and
exchanges (a trade is identified by id and exchange), copied into per-symbol arrays (41 bytes a
trade, some 60-90 ns per trade on the hot path; `correction_window = 0` turns it off, and every
fix is then `not_found`). Everything else happens only when a correction arrives, which is rare.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np

from ingest.pipeline import RecentTrades
from streams.messages import CancelError, Correction

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

    from ingest.pipeline import SymbolPipeline
    from streams.messages import StockTrade

__all__ = ["APPLIED", "TradeKeys", "TradeMemory", "apply_correction", "trade_keys"]

APPLIED: Final = ("open_bar", "partial", "closed_bar", "not_found")


class TradeMemory:
    """The last `window` (or up to twice that) trades of one stock symbol, as the pipeline saw them.

    Column arrays with room for `2 x window` trades, grown by doubling as the symbol trades, so a
    quiet symbol costs little: 41 bytes per remembered trade. Appending copies a batch's columns
    in; when the arrays are full the newest `window` trades move to the front.
    """

    __slots__ = (
        "_alive",
        "_end",
        "_exchanges",
        "_first_seq",
        "_ids",
        "_price",
        "_size",
        "_start",
        "_ts",
        "_window",
    )

    def __init__(self, window: int) -> None:
        self._window = window
        capacity = min(64, 2 * window)
        self._ids = np.empty(capacity, np.int64)
        self._exchanges = np.empty(capacity, np.int64)
        self._ts = np.empty(capacity, np.int64)
        self._price = np.empty(capacity, np.float64)
        self._size = np.empty(capacity, np.float64)
        self._alive = np.empty(capacity, np.bool_)
        self._start = self._end = 0
        self._first_seq = 0
        """Sequence number of the trade at `_start`."""

    def remember(
        self,
        seq0: int,
        trades: Sequence[StockTrade],
        ts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        size: npt.NDArray[np.float64],
        keys: TradeKeys | None = None,
    ) -> None:
        """Keep a batch the pipeline was just fed, its first trade numbered `seq0`.

        `keys` are the trades' `trade_keys` when the caller has them already (the router
        computes them once per flush for every symbol).
        """
        n = len(trades)
        ids, exchanges = trade_keys(trades) if keys is None else keys
        if self._end == self._start:
            self._first_seq = seq0
        self._make_room(n)
        end = self._end + n
        part = slice(self._end, end)
        self._ids[part] = ids
        self._exchanges[part] = exchanges
        self._ts[part] = ts
        self._price[part] = price
        self._size[part] = size
        self._alive[part] = True
        self._end = end
        excess = (self._end - self._start) - self._window
        if excess > 0:
            self._start += excess
            self._first_seq += excess

    def _make_room(self, n: int) -> None:
        capacity = len(self._ids)
        if self._end + n <= capacity:
            return
        kept = self._end - self._start
        size = capacity
        while size < kept + n and size < 2 * self._window:
            size *= 2
        size = max(size, kept + n)  # a single batch larger than the window
        for name in ("_ids", "_exchanges", "_ts", "_price", "_size", "_alive"):
            old = getattr(self, name)
            new = old if size == capacity else np.empty(size, old.dtype)
            new[:kept] = old[self._start : self._end]  # numpy copes with the overlap
            setattr(self, name, new)
        self._start, self._end = 0, kept

    def find(self, trade_id: int, exchange: str) -> int | None:
        """The position of a remembered, not cancelled trade; newest first."""
        window = slice(self._start, self._end)
        hits = np.flatnonzero(
            (self._ids[window] == trade_id)
            & (self._exchanges[window] == _exchange_code(exchange))
            & self._alive[window]
        )
        return self._start + int(hits[-1]) if len(hits) else None

    def recent(self) -> RecentTrades:
        """Every remembered trade that is not cancelled, in arrival order."""
        window = slice(self._start, self._end)
        alive = self._alive[window]
        seqs = self._first_seq + np.arange(self._end - self._start, dtype=np.int64)
        return RecentTrades(
            seq=seqs[alive],
            ts=self._ts[window][alive],
            price=self._price[window][alive],
            size=self._size[window][alive],
            oldest=self._first_seq,
        )

    def seq_of(self, position: int) -> int:
        """The arrival sequence number of the trade at `position`."""
        return self._first_seq + position - self._start

    def correct(
        self, position: int, trade_id: int, price: float, size: float
    ) -> tuple[float, float]:
        """Give a trade its corrected id, price and size; its old price and size."""
        old = float(self._price[position]), float(self._size[position])
        self._ids[position], self._price[position], self._size[position] = trade_id, price, size
        return old

    def cancel(self, position: int) -> tuple[float, float]:
        """Forget a cancelled trade; its price and size."""
        self._alive[position] = False
        return float(self._price[position]), float(self._size[position])

    def time_of(self, position: int) -> int:
        """The event time of the trade at `position`."""
        return int(self._ts[position])


def _exchange_code(exchange: str) -> int:
    """Alpaca's exchanges are one letter: its code point; anything longer, its hash."""
    return ord(exchange) if len(exchange) == 1 else hash(exchange)


TradeKeys = tuple["npt.NDArray[np.int64]", "npt.NDArray[np.int64]"]
"""(trade ids, exchange codes) of some trades: what a correction or cancel names a trade by."""


def trade_keys(trades: Sequence[StockTrade]) -> TradeKeys:
    """The ids and exchange codes of `trades`, as the memory finds them."""
    ids = np.fromiter((t.i for t in trades), np.int64, len(trades))
    joined = "".join([t.x for t in trades])
    if len(joined) == len(trades) and joined.isascii():  # the common case: one letter each
        return ids, np.frombuffer(joined.encode("ascii"), dtype=np.uint8).astype(np.int64)
    return ids, np.fromiter((_exchange_code(t.x) for t in trades), np.int64, len(trades))


def apply_correction(
    pipeline: SymbolPipeline, memory: TradeMemory, fix: Correction | CancelError
) -> str:
    """Apply a correction or cancel to the remembered trade and the open bars; one of `APPLIED`."""
    position = memory.find(fix.oi if isinstance(fix, Correction) else fix.i, fix.x)
    if position is None:
        return "not_found"
    if isinstance(fix, Correction):
        # A later correction names the corrected id, so the trade takes it.
        old_price, old_size = memory.correct(position, fix.ci, fix.cp, fix.cs)
        d_volume = fix.cs - old_size
        d_notional = fix.cp * fix.cs - old_price * old_size
    else:
        old_price, old_size = memory.cancel(position)
        d_volume, d_notional = -old_size, -old_price * old_size
    restated, series = pipeline.correct_trade(
        memory.seq_of(position), memory.time_of(position), d_volume, d_notional, memory.recent()
    )
    if restated == series:
        return "open_bar"
    return "partial" if restated else "closed_bar"
