"""Indicator warm-up: each symbol's bar series starts from history, not from nothing.

Without it every indicator is null for its first N bars after each start (N = the longest window,
plus one for RSI, volatility and momentum). Before the source starts, each configured symbol's
series is fed the closes of its last `warmup_bars` bars, so the first live bar has every indicator
defined:

1. our own `bars` table: the newest non-partial bars of each (symbol, bar type, bar size), from
   the newest date partitions back (a partial bar was cut by a stop; its bucket is built again);
2. for time series still short of history, the source's REST bars (Alpaca's vendor bars of the
   same width, where Alpaca has that timeframe: 1-59 min, 1-23 h, 1 day), first over the last
   `3 x warmup_bars` bar widths, then over four days (a weekend) for symbols still short.

Tick, volume and dollar bars warm up from the dataset only (no vendor has them). Symbols of a
`*` subscription, and a symbol whose pipeline was rebuilt after an error, warm up live.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING, Final

import anyio
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import structlog

from ingest.errors import FeedError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from ingest.config import BarSpec, PipelineSettings, Settings, StreamName
    from streams.base import SupportsBarHistory

__all__ = ["SeriesKey", "Warmup", "load_warmup", "warmup_bars"]

log = structlog.get_logger("warmup")

SeriesKey = tuple[str, str]
"""(bar type, bar size as configured), e.g. ("time", "1m")."""
Warmup = dict[str, dict[SeriesKey, list[float]]]
"""symbol -> series -> closes, oldest first."""

MAX_PARTITIONS: Final = 60
"""Date partitions searched back for a series' history at most."""
REST_DEADLINE: Final = 60.0
"""Seconds the REST part of a start's warm-up may take; past that the rest warms up live."""
_WEEKEND_NS: Final = 4 * 86_400 * 1_000_000_000


def warmup_bars(settings: PipelineSettings) -> int:
    """Closes that define every configured indicator (RSI, volatility and momentum need n + 1)."""
    needs = [*settings.sma, *settings.ema, settings.zscore]
    needs += [settings.rsi + 1, settings.volatility + 1, settings.momentum + 1]
    return max(needs)


_Bars = dict[str, dict[SeriesKey, dict[int, float]]]
"""symbol -> series -> bar start (ns) -> close."""


async def load_warmup(
    settings: Settings,
    stream: StreamName,
    symbols: Sequence[str],
    history: SupportsBarHistory | None,
) -> Warmup:
    """Closes to warm each symbol's series with: the dataset first, REST for the rest."""
    wanted = [s for s in symbols if s != "*"]
    if not settings.pipeline.warmup or not wanted or stream == "news":
        return {}
    need = warmup_bars(settings.pipeline)
    directory = settings.ingest.data_dir / stream / "bars"
    found: _Bars = await anyio.to_thread.run_sync(_from_dataset, directory, set(wanted), need)
    if history is not None:
        with anyio.move_on_after(REST_DEADLINE) as scope:
            for spec in settings.pipeline.bars:
                if spec.kind == "time":
                    await _from_rest(history, stream, spec, wanted, need, found)
        if scope.cancelled_caught:
            log.warning("warmup_rest_timed_out", stream=stream, seconds=REST_DEADLINE)
    warm: Warmup = {
        symbol: {key: [bars[ts] for ts in sorted(bars)][-need:] for key, bars in series.items()}
        for symbol, series in found.items()
    }
    lengths = [len(closes) for series in warm.values() for closes in series.values()]
    log.info(
        "warmup_loaded",
        stream=stream,
        series=len(lengths),
        complete=sum(n >= need for n in lengths),
        bars=need,
    )
    return warm


def _from_dataset(directory: Path, symbols: set[str], need: int) -> _Bars:
    """Non-partial closes per series, newest partitions first, until each has `need` (blocking)."""
    found: _Bars = defaultdict(dict)
    if not directory.is_dir():
        return {}
    partitions = sorted((p for p in directory.glob("date=*") if p.is_dir()), reverse=True)
    columns = ["symbol", "bar_type", "bar_size", "ts", "close", "partial"]
    wanted = pa.array(sorted(symbols), pa.string())
    for partition in partitions[:MAX_PARTITIONS]:
        for path in sorted(partition.glob("*.parquet")):
            try:
                rows = pq.read_table(path, columns=columns)
            except (OSError, pa.ArrowException):
                continue  # compacted away meanwhile: its rows are in the new file
            symbol = rows["symbol"].cast(pa.string())
            keep = pc.and_(pc.is_in(symbol, value_set=wanted), pc.invert(rows["partial"]))
            rows = rows.filter(keep)
            columns_ = (
                rows["symbol"].cast(pa.string()).to_pylist(),
                rows["bar_type"].to_pylist(),
                rows["bar_size"].to_pylist(),
                rows["ts"].cast(pa.int64()).to_pylist(),
                rows["close"].to_pylist(),
            )
            for name, kind, size, ts, close in zip(*columns_, strict=True):
                if name is not None and kind is not None and size is not None:
                    if ts is not None and close is not None:
                        found[name].setdefault((kind, size), {})[ts] = close
        if _enough(found, symbols, need):
            break
    return dict(found)


def _enough(found: _Bars, symbols: set[str], need: int) -> bool:
    return all(
        symbol in found and all(len(bars) >= need for bars in found[symbol].values())
        for symbol in symbols
    )


async def _from_rest(
    history: SupportsBarHistory,
    stream: StreamName,
    spec: BarSpec,
    symbols: Sequence[str],
    need: int,
    found: _Bars,
) -> None:
    """Fill time series still short of `need` closes from the source's REST bars."""
    key: SeriesKey = (spec.kind, spec.label)
    width = int(spec.size * 1e9)
    now = time.time_ns()
    current = now - now % width  # the bucket still open: its bar is not history yet
    for span in (3 * need * width, _WEEKEND_NS):
        short = [s for s in symbols if len(found.get(s, {}).get(key, {})) < need]
        if not short:
            return
        try:
            bars = await history.bar_closes(stream, short, spec.size, current - span, current - 1)
        except FeedError as exc:
            log.warning("warmup_rest_failed", stream=stream, series=spec.label, error=str(exc))
            return
        for symbol, rest in bars.items():
            series = found.setdefault(symbol, {}).setdefault(key, {})
            for ts, close in rest:
                if ts < current:
                    series.setdefault(ts, close)  # the dataset's own bar wins
