"""One symbol's pipeline: every configured bar series, its indicators, tick anomalies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ingest.pipeline.bars import TimeBarBuilder

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from ingest.config import PipelineSettings

__all__ = ["PipelineOutput", "SymbolPipeline", "indicator_columns"]

Row = dict[str, Any]


@dataclass(slots=True)
class PipelineOutput:
    """Rows produced by one call: closed bars (with indicators) and flagged trades."""

    bars: list[Row] = field(default_factory=list)
    anomalies: list[Row] = field(default_factory=list)


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


class SymbolPipeline:
    """All derived state of one symbol. Not thread-safe; owned by the symbol's task."""

    def __init__(self, symbol: str, settings: PipelineSettings) -> None:
        self.symbol = symbol
        self._indicators = dict.fromkeys(indicator_columns(settings))
        self._builders = [
            TimeBarBuilder(spec.size, spec.label) for spec in settings.bars if spec.kind == "time"
        ]

    def on_trades(
        self,
        ts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        size: npt.NDArray[np.float64],
    ) -> PipelineOutput:
        """Feed a batch of one symbol's trades, in arrival order."""
        out = PipelineOutput()
        for builder in self._builders:
            for bar in builder.update(ts, price, size):
                out.bars.append(self._row(bar, partial=False))
        return out

    def flush(self) -> PipelineOutput:
        """Close every open bar as partial (shutdown)."""
        out = PipelineOutput()
        for builder in self._builders:
            bar = builder.flush()
            if bar is not None:
                out.bars.append(self._row(bar, partial=True))
        return out

    def _row(self, bar: Row, *, partial: bool) -> Row:
        return {
            "symbol": self.symbol,
            **bar,
            "partial": partial,
            **self._indicators,
            "session_vwap": None,
            "trend": None,
        }
