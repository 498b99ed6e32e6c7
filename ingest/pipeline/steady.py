"""Many symbols' small batches in one vector step: the anomaly check, and bars that stay open.

At a trickle a flush brings each of hundreds of symbols a trade or two, and one symbol's pipeline
call costs about the same whatever its size (~20 us warm, more with its state out of cache): the
latency of a paced run is that fixed cost times the symbols of a flush. `take_steady` takes a
flush's batches that stay in their session (no new UTC day, no trade of an earlier one) once the
anomaly window is full. Their trades are checked for anomalies together, with a few numpy calls
over every symbol's window. Most of them also close no bar and have no late trade: those move on
from a summary of their batch, one loop a series for all of them. The few that close a bar go
through their own bar builders (`SymbolPipeline.bars_of`), which the caller runs. The others
are left as they were, for `SymbolPipeline.on_trades`.

Both ways give the same state and the same rows, bit for bit: the running sums are added one
trade after the other from the session's sums (`np.add.accumulate` along each symbol's row),
the price range is numpy's, and the anomaly windows are summed by the very routine `detect` uses
(`AnomalyDetector.check_windows`). `tests/pipeline/test_steady.py` feeds random workloads both
ways and compares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING

import numpy as np

from ingest.pipeline.bars import Slices
from ingest.pipeline.symbol import SESSION_STATE

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

    from ingest.pipeline.symbol import Row, SymbolPipeline

__all__ = ["Steady", "take_steady"]

_DAY_NS = 86_400 * 1_000_000_000
_BUILDERS = attrgetter("builders")
_DETECTOR = attrgetter("anomaly")
_RECENT = attrgetter("recent")


@dataclass(slots=True)
class Steady:
    """What `take_steady` did with each pipeline's batch."""

    taken: list[bool]
    """Per pipeline: its batch was taken (else it is untouched, for `on_trades`)."""
    closing: list[int] = field(default_factory=list)
    """Pipelines taken (by position) whose batch closes a bar or has a late trade: its anomaly
    check is done, its bars are not; the caller runs the batch through `bars_of`."""
    anomalies: dict[int, list[Row]] = field(default_factory=dict)
    """Per pipeline taken (by position), the anomaly rows of its batch, when it has any."""


def take_steady(
    pipelines: Sequence[SymbolPipeline],
    ts: npt.NDArray[np.int64],
    price: npt.NDArray[np.float64],
    size: npt.NDArray[np.float64],
    counts: npt.NDArray[np.intp],
) -> Steady:
    """Take every batch that stays in its session once the anomaly window is full.

    The batches are consecutive in `ts`, `price` and `size`, `counts[k]` trades (at least one)
    for `pipelines[k]`, each in arrival order. All pipelines share one configuration. No state
    changes until everything is computed: if this raises, every pipeline is as it was. Batches
    listed in `Steady.closing` are taken but for their bars: the caller must run each through
    its pipeline's `bars_of` before anything else reaches that pipeline.
    """
    k_all = len(pipelines)
    starts = np.cumsum(counts) - counts
    ends = starts + counts
    tmin = np.minimum.reduceat(ts, starts)
    tmax = np.maximum.reduceat(ts, starts)
    session = list(map(SESSION_STATE, pipelines))
    days = np.array([-1 if day is None else day for day, _, _ in session], np.int64)
    steady = (days >= 0) & (tmin // _DAY_NS == days) & (tmax // _DAY_NS == days)

    # The session's running sums, one trade after the other along each symbol's row; the
    # padding after a short batch adds zeros, which change no sum.
    rows = np.repeat(np.arange(k_all), counts)
    cols = np.arange(len(ts)) - np.repeat(starts, counts)
    width = int(counts.max()) + 1
    volume = np.zeros((k_all, width))
    notional = np.zeros((k_all, width))
    volume[:, 0] = [cv for _, cv, _ in session]
    notional[:, 0] = [cpv for _, _, cpv in session]
    volume[rows, cols + 1] = size
    notional[rows, cols + 1] = price * size
    end_v = np.add.accumulate(volume, axis=1)[:, -1]
    end_pv = np.add.accumulate(notional, axis=1)[:, -1]

    slices = Slices(
        tmin,
        tmax,
        counts,
        end_v,
        end_pv,
        high=np.maximum.reduceat(price, starts),
        low=np.minimum.reduceat(price, starts),
        last=price[ends - 1],
    )
    detectors = list(map(_DETECTOR, pipelines))
    window = detectors[0].window
    recents = list(map(_RECENT, detectors))
    steady &= np.fromiter(map(len, recents), np.intp, k_all) == window
    absorbed = steady.copy()
    builders = list(map(_BUILDERS, pipelines))
    for series in zip(*builders, strict=True):
        absorbed &= type(series[0]).absorbs(series, slices)

    taken = steady.tolist()
    out = Steady(taken)
    chosen = np.flatnonzero(steady)
    if not len(chosen):
        return out

    # Each chosen symbol's row: its last `window` prices, then its batch's.
    mine = steady[rows]
    rank = np.cumsum(steady) - 1
    trade_row = rank[rows[mine]]
    trade_col = cols[mine]
    history = np.empty((len(chosen), window + width - 1))
    history[:, :window] = [recents[k] for k in chosen.tolist()]
    history[trade_row, window + trade_col] = price[mine]
    span = np.arange(window)
    hits = detectors[0].check_windows(
        history[trade_row[:, None], trade_col[:, None] + span], price[mine]
    )
    kept = history[np.arange(len(chosen))[:, None], counts[chosen][:, None] + span]
    if hits:
        stamps = ts[mine]
        owner = chosen[trade_row]
        for hit in hits:
            k = int(owner[hit.index])
            row = pipelines[k].anomaly_row(int(stamps[hit.index]), hit)
            out.anomalies.setdefault(k, []).append(row)

    for i, k in enumerate(chosen.tolist()):
        detectors[k].slide(kept[i])
    out.closing = np.flatnonzero(steady & ~absorbed).tolist()
    moved = np.flatnonzero(absorbed)
    if len(moved):
        type(pipelines[0]).take_steady([pipelines[k] for k in moved.tolist()], slices.take(moved))
    return out
