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
exchanges (a trade is identified by id and exchange), gathered once per flush and copied into a
per-symbol ring (41 bytes a trade, one copy a batch; `correction_window = 0` turns it off, and
every fix is then `not_found`). Everything else happens only when a correction arrives, which is
rare.
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

__all__ = [
    "APPLIED",
    "TRADE_RECORD",
    "TradeKeys",
    "TradeMemory",
    "apply_correction",
    "trade_keys",
    "trade_records",
]

APPLIED: Final = ("open_bar", "partial", "closed_bar", "not_found")


TRADE_RECORD: Final = np.dtype(
    [
        ("id", np.int64),
        ("exchange", np.int64),
        ("ts", np.int64),
        ("price", np.float64),
        ("size", np.float64),
        ("alive", np.bool_),
    ]
)
"""One remembered trade, packed (41 bytes): a batch goes into the memory in one copy."""
_PACKED: Final = np.dtype((np.void, TRADE_RECORD.itemsize))
"""A `TRADE_RECORD` as plain bytes: numpy copies these as memory (0.5 us a small batch), where
records of named fields go field by field (1.7 us)."""


class TradeMemory:
    """The last `window` trades of one stock symbol, as the pipeline saw them.

    A ring of `TRADE_RECORD`s: a trade's position is its arrival sequence number, its slot that
    number modulo the capacity. The capacity grows by doubling up to `window` as the symbol
    trades, so a quiet symbol costs little and a busy one `window` x 41 bytes at most. (A buffer
    of twice the window, compacted when full, held up to 16,384 slots: 134 MB at 200 symbols.)
    Records rather than a column array each: a batch is one copy, not six (a symbol call of a
    trade or two paid ~3.6 us for six, ~1.0 us for one).
    """

    __slots__ = ("_next", "_oldest", "_packed", "_ring", "_window")

    def __init__(self, window: int) -> None:
        self._window = window
        self._ring = np.empty(min(64, window), TRADE_RECORD)
        self._packed = self._ring.view(_PACKED)
        """The ring's records as plain bytes, for copying batches in."""
        self._oldest = self._next = 0
        """Sequence numbers of the oldest trade kept and of the next one."""

    def remember(self, seq0: int, records: npt.NDArray[np.void]) -> None:
        """Keep a batch the pipeline was just fed, its first trade numbered `seq0`.

        `records` are the trades' `trade_records` (the router builds them once per flush for
        every symbol), packed as those give them.
        """
        n = len(records)
        if n == 0 or self._window == 0:
            return
        if seq0 != self._next:  # the first batch, or numbering started over: start afresh
            self._oldest = self._next = seq0
        skip = max(0, n - self._window)  # of a batch larger than the window, its last trades
        end = seq0 + n
        self._make_room(end - max(self._oldest, end - self._window))
        # Into the ring as (at most) two slices: up to its end, then from its start.
        ring = self._packed
        start = (seq0 + skip) % len(ring)
        head = min(n - skip, len(ring) - start)
        ring[start : start + head] = records[skip : skip + head]
        if skip + head < n:  # rarely: an empty slice assignment costs as much as a full one
            ring[: n - skip - head] = records[skip + head :]
        self._next = end
        self._oldest = max(self._oldest, end - self._window)

    @property
    def capacity(self) -> int:
        """Trades it has room for (41 bytes each): what it costs."""
        return len(self._ring)

    def _make_room(self, kept: int) -> None:
        """Grow the ring (by doubling, up to the window) to hold `kept` trades."""
        capacity = len(self._ring)
        if kept <= capacity or capacity >= self._window:
            return
        size = capacity
        while size < kept and size < self._window:
            size *= 2
        size = min(size, self._window)
        old = np.arange(self._oldest, self._next)
        grown = np.empty(size, TRADE_RECORD)
        grown[old % size] = self._ring[old % capacity]
        self._ring = grown
        self._packed = grown.view(_PACKED)

    def _kept(self) -> npt.NDArray[np.int64]:
        """The slots of the kept trades, oldest first."""
        return np.arange(self._oldest, self._next) % len(self._ring)

    def find(self, trade_id: int, exchange: str) -> int | None:
        """The position of a remembered, not cancelled trade; newest first."""
        kept = self._ring[self._kept()]
        hits = np.flatnonzero(
            (kept["id"] == trade_id)
            & (kept["exchange"] == _exchange_code(exchange))
            & kept["alive"]
        )
        return self._oldest + int(hits[-1]) if len(hits) else None

    def recent(self) -> RecentTrades:
        """Every remembered trade that is not cancelled, in arrival order."""
        kept = self._ring[self._kept()]
        alive = kept["alive"]
        seqs = np.arange(self._oldest, self._next, dtype=np.int64)
        kept = kept[alive]
        return RecentTrades(
            seq=seqs[alive],
            ts=np.ascontiguousarray(kept["ts"]),
            price=np.ascontiguousarray(kept["price"]),
            size=np.ascontiguousarray(kept["size"]),
            oldest=self._oldest,
        )

    def seq_of(self, position: int) -> int:
        """The arrival sequence number of the trade at `position` (they are the same)."""
        return position

    def correct(
        self, position: int, trade_id: int, price: float, size: float
    ) -> tuple[float, float]:
        """Give a trade its corrected id, price and size; its old price and size."""
        slot = position % len(self._ring)
        ring = self._ring
        old = float(ring["price"][slot]), float(ring["size"][slot])
        ring["id"][slot], ring["price"][slot], ring["size"][slot] = trade_id, price, size
        return old

    def cancel(self, position: int) -> tuple[float, float]:
        """Forget a cancelled trade; its price and size."""
        slot = position % len(self._ring)
        ring = self._ring
        ring["alive"][slot] = False
        return float(ring["price"][slot]), float(ring["size"][slot])

    def time_of(self, position: int) -> int:
        """The event time of the trade at `position`."""
        return int(self._ring["ts"][position % len(self._ring)])


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


def trade_records(
    keys: TradeKeys,
    ts: npt.NDArray[np.int64],
    price: npt.NDArray[np.float64],
    size: npt.NDArray[np.float64],
) -> npt.NDArray[np.void]:
    """Trades as the memory keeps them: their keys and the columns the pipeline was fed.

    Packed: each record is 41 plain bytes; `.view(TRADE_RECORD)` reads their fields.
    """
    records = np.empty(len(ts), TRADE_RECORD)
    records["id"], records["exchange"] = keys
    records["ts"] = ts
    records["price"] = price
    records["size"] = size
    records["alive"] = True
    return records.view(_PACKED)


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
