"""The shared window / indicator / bar pipeline every trade passes through.

One `SymbolPipeline` holds all derived state of one symbol; the symbol's task owns it and feeds it
column batches (`on_trades`). Output rows are plain dicts because they are rare (one per closed bar
or flagged trade) and their columns follow the configuration. How bars are cut, what the
indicators mean and how late trades are treated is written down in `docs/pipeline.md`.
"""

from __future__ import annotations

from ingest.pipeline.indicators import session_vwap_hlc3
from ingest.pipeline.symbol import (
    PipelineOutput,
    RecentTrades,
    SymbolPipeline,
    indicator_columns,
)

__all__ = [
    "PipelineOutput",
    "RecentTrades",
    "SymbolPipeline",
    "indicator_columns",
    "session_vwap_hlc3",
]
