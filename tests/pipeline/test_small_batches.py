"""Small batches take plain-Python paths; their output must equal the numpy paths' to the bit."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from ingest.config import AnomalySettings, BarSpec, PipelineSettings
from ingest.pipeline import RecentTrades, SymbolPipeline, anomaly, symbol
from ingest.pipeline.anomaly import window_sums
from tests.pipeline.test_streaming import SMALL, SMALL_IQR

MIDNIGHT = 1_719_878_400_000_000_000
SECOND = 1_000_000_000
DAY = 86_400 * SECOND
ALWAYS, NEVER = 1 << 30, 0
"""Values of the scalar thresholds that force the scalar or the vector path everywhere."""

CONFIGS = {
    "zscore": SMALL,
    "iqr": SMALL_IQR,
    "default": PipelineSettings(),
    # Quartiles that fall on a value (no interpolation) of five-price windows.
    "iqr5": PipelineSettings(
        bars=SMALL.bars[2:], anomaly=AnomalySettings(window=5, threshold=0.5, method="iqr")
    ),
    # A window above numpy's 128-value summation block: the pairwise sum splits in halves.
    "wide": PipelineSettings(
        bars=(BarSpec("time", 1.0, "1s"), BarSpec("dollar", 5000.0, "5000")),
        anomaly=AnomalySettings(window=150, threshold=1.0),
    ),
}

Stream = tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]


def stream(seed: int, *, negative_zeros: bool = True) -> tuple[Stream, list[int]]:
    """Trades across a UTC midnight with late ones, a batch of the previous day, and cuts.

    Batch sizes are mostly small (1 to 5, and around the scalar threshold) with some up to 300.
    Some prices are zero, of both signs unless `negative_zeros` is off (which of two equal zeros
    a bar's low or high keeps depends on the batching, as it always did).
    """
    rng = np.random.default_rng(seed)
    n = 1500
    gaps = rng.integers(0, SECOND, n) * rng.choice([0, 1, 1, 1], n)
    ts = MIDNIGHT - 200 * SECOND + np.cumsum(gaps)
    ts -= rng.choice([0] * 30 + [SECOND, 90 * SECOND], n)
    price = np.round(100.0 + np.cumsum(rng.choice([-0.5, -0.25, 0.0, 0.25, 0.5, 4.0], n)), 2)
    price[rng.random(n) < 0.02] = -0.0 if negative_zeros else 0.0
    price[rng.random(n) < 0.01] = 0.0
    zeros = int(rng.integers(100, n - 30))  # a run of zeros: whole bars with a high of zero
    price[zeros : zeros + 30] = rng.choice([-0.0 if negative_zeros else 0.0, 0.0], 30)
    size = rng.choice([0.0, 0.001, 0.3, 1.0, 7.0, 25.0, 60.0], n)
    cuts = [0]
    while cuts[-1] < n:
        small = int(rng.choice([1, 1, 2, 3, 4, 5, 63, 64, 65]))
        cuts.append(
            min(n, cuts[-1] + (small if rng.random() < 0.85 else int(rng.integers(1, 301))))
        )
    # A whole batch stamped a day back, well after midnight: none of it joins the session VWAP.
    late_day = next(i for i, c in enumerate(cuts) if ts[c] > MIDNIGHT + 60 * SECOND)
    ts[cuts[late_day] : cuts[late_day + 1]] -= DAY
    return (ts.astype(np.int64), price, size), cuts


def exact(value: Any) -> Any:
    """`value` with every float as its hex text: equal only if equal to the bit (-0.0 too)."""
    if isinstance(value, float):
        return value.hex()
    if isinstance(value, dict):
        return {k: exact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [exact(v) for v in value]
    return value


@dataclass
class Memory:
    """The trades fed so far, corrected, as `ingest.corrections` would remember them."""

    seq: list[int] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    price: list[float] = field(default_factory=list)
    size: list[float] = field(default_factory=list)

    def correct(self, pipeline: SymbolPipeline, rng: np.random.Generator) -> tuple[int, int]:
        """Correct (or, one time in three, cancel) one of the last 40 trades."""
        k = len(self.seq) - 1 - int(rng.integers(0, min(len(self.seq), 40)))
        seq, ts, old_price, old_size = self.seq[k], self.ts[k], self.price[k], self.size[k]
        new_price, new_size = old_price * float(rng.uniform(0.9, 1.1)), float(rng.integers(100))
        if rng.random() < 0.3:
            new_size = 0.0
            for column in (self.seq, self.ts, self.price, self.size):
                del column[k]
        else:
            self.price[k], self.size[k] = new_price, new_size
        recent = RecentTrades(
            np.array(self.seq, dtype=np.int64),
            np.array(self.ts, dtype=np.int64),
            np.array(self.price),
            np.array(self.size),
            oldest=0,
        )
        d_volume = new_size - old_size
        d_notional = new_price * new_size - old_price * old_size
        return pipeline.correct_trade(seq, ts, d_volume, d_notional, recent)


def run(config: PipelineSettings, trades: Stream, cuts: list[int], *, fixes: bool) -> Any:
    """Every output of one pipeline fed the batches `cuts` (bit-exact), tagged by kind.

    With `fixes`, a trade is corrected after about one batch in five.
    """
    ts, price, size = trades
    pipeline = SymbolPipeline("X", config)
    memory = Memory()
    rng = np.random.default_rng(len(cuts))
    outputs: list[Any] = []
    for lo, hi in itertools.pairwise(cuts):
        out = pipeline.on_trades(ts[lo:hi], price[lo:hi], size[lo:hi])
        outputs.append(("batch", out.bars, out.anomalies, pipeline.late_trades))
        memory.seq += range(lo, hi)
        memory.ts += ts[lo:hi].tolist()
        memory.price += price[lo:hi].tolist()
        memory.size += size[lo:hi].tolist()
        if fixes and rng.random() < 0.2:
            outputs.append(("fix", *memory.correct(pipeline, rng)))
    outputs.append(("flush", pipeline.flush().bars))
    return exact(outputs)


def run_forced(limit: int, *args: Any, fixes: bool = True) -> Any:
    """`run` with both scalar thresholds (`SCALAR_MAX`, `SCALAR_WORK`) set to `limit`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(symbol, "SCALAR_MAX", limit)
        patch.setattr(anomaly, "SCALAR_WORK", limit)
        return run(*args, fixes=fixes)


def merged(outputs: Any) -> tuple[list[Any], list[Any], int, list[Any]]:
    """Bars, anomalies, the final late count and the flushed bars of `run` without fixes."""
    batches = outputs[:-1]
    bars = [bar for batch in batches for bar in batch[1]]
    anomalies = [row for batch in batches for row in batch[2]]
    return bars, anomalies, batches[-1][3], outputs[-1][1]


class TestSmallBatchesEqualTheVectorPath:
    @pytest.mark.parametrize("seed", [1, 2, 3, 4])
    @pytest.mark.parametrize("name", CONFIGS)
    def test_every_output_is_identical(self, seed: int, name: str) -> None:
        """Default thresholds, all-scalar and all-vector paths give the same bits.

        Bars (every field), anomalies, late counts, corrections and flushed bars.
        """
        trades, cuts = stream(seed)
        config = CONFIGS[name]
        reference = run_forced(NEVER, config, trades, cuts)
        assert run(config, trades, cuts, fixes=True) == reference
        assert run_forced(ALWAYS, config, trades, cuts) == reference

    @pytest.mark.parametrize("seed", [1, 2, 3, 4])
    @pytest.mark.parametrize("name", CONFIGS)
    def test_small_batches_equal_one_batch(self, seed: int, name: str) -> None:
        """Without corrections, the small batches also equal the stream fed whole (numpy).

        Without negative zeros: which zero a bar's low or high gets does depend on the batching.
        """
        trades, cuts = stream(seed, negative_zeros=False)
        config = CONFIGS[name]
        whole = run_forced(NEVER, config, trades, [0, len(trades[0])], fixes=False)
        assert merged(run(config, trades, cuts, fixes=False)) == merged(whole)

    def test_zero_prices_keep_numpys_low_and_high(self) -> None:
        """Python's min and max pick other zeros of 0.0 and -0.0 than numpy's; bars get numpy's."""
        config = PipelineSettings(bars=(BarSpec("tick", 2.0, "2"),))
        ts = np.full(2, MIDNIGHT, dtype=np.int64)
        batches = [np.array([0.0, -0.0]), np.array([-0.0, 0.0])]

        def bars(limit: int) -> Any:
            pipeline = SymbolPipeline("X", config)
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(symbol, "SCALAR_MAX", limit)
                rows = [pipeline.on_trades(ts, price, np.ones(2)).bars for price in batches]
            return exact(rows)

        assert bars(ALWAYS) == bars(NEVER)

    def test_stream_exercises_every_path(self) -> None:
        """Every bar kind closes, trades are flagged and late, bars restated, a day back fed."""
        trades, cuts = stream(1)
        outputs = run(SMALL, trades, cuts, fixes=True)
        bars, anomalies, late, _ = merged([o for o in outputs if o[0] != "fix"])
        assert {b["bar_type"] for b in bars} == {"time", "tick", "volume", "dollar"}
        assert anomalies
        assert late > 0
        assert any(o[0] == "fix" and o[1] > 0 for o in outputs)
        assert any(b["ts"] < MIDNIGHT for b in bars)
        assert any(b["ts"] >= MIDNIGHT for b in bars)
        assert (trades[0] < MIDNIGHT - DAY + 3600 * SECOND).any()
        sizes = [hi - lo for lo, hi in itertools.pairwise(cuts)]
        assert min(sizes) == 1
        assert max(sizes) > symbol.SCALAR_MAX


class TestWindowSums:
    @pytest.mark.parametrize("rows", [1, 3, 40])
    def test_round_as_numpy_add_reduce(self, rows: int) -> None:
        """Every length up to 300 (blocks, tails, halves), values of mixed sign and magnitude.

        Row 0 is all negative zeros: numpy starts from its identity 0.0, so their sum is 0.0.
        The spread is the sum of squared deviations from each row's mean, as the vector path
        computes it.
        """
        rng = np.random.default_rng(rows)
        for n in range(1, 301):
            total, spread = window_sums(n)
            windows = rng.normal(0.0, 1.0, (rows, n)) * 10.0 ** rng.integers(-8, 8, (rows, n))
            windows[0] = -0.0
            sums = np.add.reduce(windows, axis=1)
            assert exact([total(row) for row in windows.tolist()]) == exact(sums.tolist()), n
            mean = sums / n
            deviations = windows - mean[:, None]
            want = exact(np.add.reduce(deviations * deviations, axis=1).tolist())
            got = [spread(row, m) for row, m in zip(windows.tolist(), mean.tolist(), strict=True)]
            assert exact(got) == want, n
