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

Only stock trades are remembered: per batch, the arrays the pipeline was fed plus the ids and
exchanges (a trade is identified by id and exchange), in chunks dropped once the window is full.
Everything else happens only when a correction arrives, which is rare.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np

from ingest.pipeline import RecentTrades
from streams.messages import CancelError, Correction

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

    from ingest.pipeline import SymbolPipeline
    from streams.messages import StockTrade

__all__ = ["APPLIED", "TradeMemory", "apply_correction"]

APPLIED: Final = ("open_bar", "partial", "closed_bar", "not_found")


@dataclass(slots=True)
class _Chunk:
    """One batch of remembered trades; `alive` is False for a cancelled trade."""

    seq0: int
    ids: npt.NDArray[np.int64]
    exchanges: list[str]
    ts: npt.NDArray[np.int64]
    price: npt.NDArray[np.float64]
    size: npt.NDArray[np.float64]
    alive: npt.NDArray[np.bool_]


class TradeMemory:
    """The last `window` (or a few more) trades of one stock symbol, as the pipeline saw them."""

    def __init__(self, window: int) -> None:
        self._window = window
        self._chunks: deque[_Chunk] = deque()
        self._count = 0

    def remember(
        self,
        seq0: int,
        trades: Sequence[StockTrade],
        ts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        size: npt.NDArray[np.float64],
    ) -> None:
        """Keep a batch the pipeline was just fed, its first trade numbered `seq0`."""
        n = len(trades)
        ids = np.fromiter((t.i for t in trades), np.int64, n)
        alive = np.ones(n, dtype=bool)
        # Copies: a correction rewrites price and size here, never in the caller's arrays.
        chunk = _Chunk(seq0, ids, [t.x for t in trades], ts, price.copy(), size.copy(), alive)
        self._chunks.append(chunk)
        self._count += n
        while self._count - len(self._chunks[0].ids) >= self._window:
            self._count -= len(self._chunks.popleft().ids)

    def find(self, trade_id: int, exchange: str) -> tuple[_Chunk, int] | None:
        """The chunk and position of a remembered, not cancelled trade; newest first."""
        for chunk in reversed(self._chunks):
            for position in np.flatnonzero(chunk.ids == trade_id).tolist():
                if chunk.exchanges[position] == exchange and chunk.alive[position]:
                    return chunk, position
        return None

    def recent(self) -> RecentTrades:
        """Every remembered trade that is not cancelled, in arrival order."""
        chunks = list(self._chunks)
        alive = np.concatenate([c.alive for c in chunks])
        seqs = np.concatenate([c.seq0 + np.arange(len(c.ids), dtype=np.int64) for c in chunks])
        return RecentTrades(
            seq=seqs[alive],
            ts=np.concatenate([c.ts for c in chunks])[alive],
            price=np.concatenate([c.price for c in chunks])[alive],
            size=np.concatenate([c.size for c in chunks])[alive],
            oldest=chunks[0].seq0,
        )


def apply_correction(
    pipeline: SymbolPipeline, memory: TradeMemory, fix: Correction | CancelError
) -> str:
    """Apply a correction or cancel to the remembered trade and the open bars; one of `APPLIED`."""
    if isinstance(fix, Correction):
        found = memory.find(fix.oi, fix.x)
    else:
        found = memory.find(fix.i, fix.x)
    if found is None:
        return "not_found"
    chunk, position = found
    old_price, old_size = float(chunk.price[position]), float(chunk.size[position])
    if isinstance(fix, Correction):
        chunk.price[position], chunk.size[position] = fix.cp, fix.cs
        chunk.ids[position] = fix.ci  # a later correction names the corrected id
        d_volume = fix.cs - old_size
        d_notional = fix.cp * fix.cs - old_price * old_size
    else:
        chunk.alive[position] = False
        d_volume, d_notional = -old_size, -old_price * old_size
    restated, series = pipeline.correct_trade(
        chunk.seq0 + position, int(chunk.ts[position]), d_volume, d_notional, memory.recent()
    )
    if restated == series:
        return "open_bar"
    return "partial" if restated else "closed_bar"
