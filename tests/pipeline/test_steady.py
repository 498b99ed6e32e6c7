"""Batches taken together by `take_steady` leave every symbol as its own `on_trades` would."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from ingest.config import BarSpec, PipelineSettings
from ingest.pipeline import SymbolPipeline, closes
from ingest.pipeline import steady as steady_module
from ingest.pipeline.book import SteadyBook
from ingest.pipeline.closes import IN_ARRAYS_MIN, close_in_arrays
from ingest.pipeline.steady import take_steady
from tests.pipeline.test_small_batches import CONFIGS, Stream, exact, stream

SYMBOLS = 6


def _batches(seed: int) -> list[list[Stream]]:
    """Each symbol's trades (its own `stream`) cut into its batches."""
    out = []
    for s in range(SYMBOLS):
        (ts, price, size), cuts = stream(seed * 100 + s)
        out.append([(ts[a:b], price[a:b], size[a:b]) for a, b in itertools.pairwise(cuts)])
    return out


def _outputs(pipeline: SymbolPipeline, batch: Stream) -> list[Any]:
    out = pipeline.on_trades(*batch)
    return [exact(out.bars), exact(out.anomalies)]


def _state(pipeline: SymbolPipeline) -> list[Any]:
    """What is left in a pipeline: its partial bars, counters, anomaly window.

    And where each open bar began (what a correction finds it by).
    """
    recent = pipeline.anomaly.recent
    return [
        [b.open_since for b in pipeline.builders],
        exact(pipeline.flush().bars),
        pipeline.trades_seen,
        pipeline.late_trades,
        exact(list(np.asarray(recent, np.float64).tolist())),
    ]


def _run_both(
    settings: PipelineSettings, seed: int, batches: list[list[Stream]] | None = None
) -> tuple[int, int, int]:
    """Feed every symbol's batches one at a time, and flush by flush through `take_steady`.

    Returns how many batches were offered, taken, and taken but closing (`Steady.close`).
    """
    batches = _batches(seed) if batches is None else batches
    symbols = [f"S{s}" for s in range(len(batches))]
    alone = [SymbolPipeline(name, settings) for name in symbols]
    together = [SymbolPipeline(name, settings) for name in symbols]
    book = SteadyBook()
    seen: list[list[Any]] = [[] for _ in symbols]
    got: list[list[Any]] = [[] for _ in symbols]
    taken = offered = closing = 0
    for f in range(max(map(len, batches))):
        here = [s for s in range(len(batches)) if f < len(batches[s])]
        for s in here:
            seen[s].append(_outputs(alone[s], batches[s][f]))
        small = [s for s in here if len(batches[s][f][0]) <= 64]
        if small:
            parts = [batches[s][f] for s in small]
            steady = take_steady(
                book,
                [together[s] for s in small],
                np.concatenate([p[0] for p in parts]),
                np.concatenate([p[1] for p in parts]),
                np.concatenate([p[2] for p in parts]),
                np.array([len(p[0]) for p in parts], np.intp),
            )
            offered += len(small)
            taken += sum(steady.taken)
            closing += len(steady.closing)
        else:
            steady = None
        for s in here:
            position = small.index(s) if s in small else -1
            if steady is not None and position >= 0 and steady.taken[position]:
                bars = []
                if position in steady.closing:
                    bars = steady.close(position)
                got[s].append([exact(bars), exact(steady.anomalies.get(position, []))])
            else:
                got[s].append(_outputs(together[s], batches[s][f]))
    for s in range(len(batches)):
        assert got[s] == seen[s], symbols[s]
        assert _state(together[s]) == _state(alone[s]), symbols[s]
    return offered, taken, closing


@pytest.mark.parametrize("in_arrays_min", [0, IN_ARRAYS_MIN], ids=["all in arrays", "default"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("seed", [1, 2])
def test_taken_batches_leave_the_same_rows_and_state(
    config: str, seed: int, in_arrays_min: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bit for bit, every bar opened or closed in arrays where it can be, or the default.

    By default only when a flush has enough of them (`IN_ARRAYS_MIN`): the builders do the rest.
    """
    monkeypatch.setattr(closes, "IN_ARRAYS_MIN", in_arrays_min)
    offered, taken, closing = _run_both(CONFIGS[config], seed)
    # Both kinds were taken, and not everything: windows fill, sessions start.
    assert 0 < closing < taken
    assert taken < offered


def test_most_small_batches_are_steady_with_the_default_bars() -> None:
    # Even on this rough workload (late trades, a midnight, batches of a day back).
    offered, taken, _ = _run_both(PipelineSettings(), 3)
    assert taken > 0.8 * offered


@pytest.mark.parametrize(
    ("ticks", "volume", "dollars"), [(4, 10, 1000), (40, 90, 12_000)], ids=["small", "long"]
)
def test_count_bars_closed_in_arrays_are_the_builders_bars(
    monkeypatch: pytest.MonkeyPatch, ticks: int, volume: int, dollars: int
) -> None:
    """Count bars opened and closed by `close_in_arrays`, bit for bit as their builders do.

    Whole-number sizes and prices, so that sums land exactly on the thresholds: a bar filled
    by a batch's last trade, the next bar filled exactly by the rest of a batch (two fills: the
    builders' case), a batch that only opens a bar; and a midnight, after which the bars that
    were open fill in arrays with the old session's volume as their base (long bars: most are
    open at midnight).
    """
    handled: list[int] = []

    def counting(*args: Any) -> Any:
        done = close_in_arrays(*args)
        handled.append(int(done.handled.sum()))
        return done

    monkeypatch.setattr(steady_module, "close_in_arrays", counting)
    monkeypatch.setattr(closes, "IN_ARRAYS_MIN", 0)
    settings = PipelineSettings(
        bars=(
            BarSpec("time", 60.0, "1m"),
            BarSpec("tick", float(ticks), str(ticks)),
            BarSpec("volume", float(volume), str(volume)),
            BarSpec("dollar", float(dollars), str(dollars)),
        )
    )
    rng = np.random.default_rng(7)
    batches = []
    for s in range(4):
        n = 400
        # Across a UTC midnight: the bars open then carry the old session's share as a base.
        ts = 1_719_878_300_000_000_000 + np.cumsum(rng.integers(1, 10**9, n))
        price = rng.choice([50.0, 100.0, 200.0, 250.0], n) + s
        size = rng.choice([1.0, 2.0, 3.0, 5.0, 10.0], n)
        ends = np.cumsum(rng.integers(1, 7, n))
        cuts = [0, *ends[ends < n].tolist(), n]
        batches.append(
            [(ts[a:b], price[a:b], size[a:b]) for a, b in itertools.pairwise(cuts) if b > a]
        )
    offered, taken, _ = _run_both(settings, 0, batches)
    assert taken > 0.9 * offered
    assert sum(handled) > 150


def test_a_flagged_trade_taken_together_is_reported_once_with_its_time() -> None:
    settings = PipelineSettings()
    window = settings.anomaly.window
    pipelines = [SymbolPipeline(name, settings) for name in ("A", "B")]
    start = 1_719_878_400_000_000_000 + 10**9
    warm_ts = start + np.arange(window, dtype=np.int64)
    calm = 100.0 + 0.01 * (np.arange(window, dtype=np.float64) % 3)
    for p in pipelines:
        p.on_trades(warm_ts, calm, np.ones(window))
    ts = np.array([start + 100, start + 101, start + 102], np.int64)
    price = np.array([100.01, 100.0, 130.0])
    steady = take_steady(SteadyBook(), pipelines, ts, price, np.ones(3), np.array([1, 2], np.intp))
    assert steady.taken == [True, True]
    assert list(steady.anomalies) == [1]
    (row,) = steady.anomalies[1]
    assert row["symbol"] == "B"
    assert row["ts"] == start + 102
    assert row["price"] == 130.0
    assert pipelines[1].trades_seen == window + 2
