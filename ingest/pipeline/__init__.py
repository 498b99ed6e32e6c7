"""The shared window / indicator / bar pipeline every trade passes through.

One `SymbolPipeline` holds all derived state of one symbol; the symbol's task owns it and feeds it
column batches (`on_trades`). Output rows are plain dicts because they are rare (one per closed bar
or flagged trade) and their columns follow the configuration.
"""

from __future__ import annotations

from ingest.pipeline.symbol import PipelineOutput, SymbolPipeline, indicator_columns

__all__ = ["PipelineOutput", "SymbolPipeline", "indicator_columns"]
