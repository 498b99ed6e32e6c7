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

Only stock trades are remembered: the columns the pipeline was fed plus the ids and exchanges (a
trade is identified by id and exchange), 41 bytes a trade, every symbol's in one store
(`ingest.trade_memory`; `correction_window = 0` turns it off, and every fix is then
`not_found`). Everything else happens only when a correction arrives, which is rare.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from streams.messages import Correction

if TYPE_CHECKING:
    from ingest.pipeline import SymbolPipeline
    from ingest.trade_memory import TradeMemory
    from streams.messages import CancelError

__all__ = ["APPLIED", "apply_correction"]

APPLIED: Final = ("open_bar", "partial", "closed_bar", "not_found")


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
