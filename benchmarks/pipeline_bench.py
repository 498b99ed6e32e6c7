"""Throughput of `SymbolPipeline.on_trades`: ticks per second through the whole pipeline.

Feeds 200 symbols round-robin, ~50 trades per symbol per call (the shape of a busy frame after
demultiplexing), through the default `[pipeline]` settings: time:1m, tick:100, volume:10000 and
dollar:1000000 bars, every indicator at each bar close, z-score anomalies over 20 trades and the
session VWAP. Trades are a seeded geometric random walk, 1 ms apart per symbol, generated before
the clock starts. One process, one core:

    .venv/bin/python benchmarks/pipeline_bench.py [--ticks 2000000] [--symbols 200] [--batch 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ingest.config import AnomalySettings, PipelineSettings
from ingest.pipeline import SymbolPipeline

_START_NS = 1_719_878_400_000_000_000  # 2024-07-02 00:00 UTC


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=2_000_000)
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--method", choices=["zscore", "iqr"], default="zscore")
    args = parser.parse_args()

    settings = PipelineSettings(anomaly=AnomalySettings(method=args.method))
    rng = np.random.default_rng(7)
    per_symbol = args.ticks // args.symbols
    rounds = per_symbol // args.batch
    ts = _START_NS + np.arange(rounds * args.batch, dtype=np.int64) * 1_000_000
    feeds = []
    for _ in range(args.symbols):
        steps = rng.normal(0.0, 2e-4, rounds * args.batch)
        price = np.round(100.0 * np.exp(np.cumsum(steps)), 2)
        size = rng.integers(1, 200, rounds * args.batch).astype(np.float64)
        feeds.append((price, size))
    pipelines = [SymbolPipeline(f"SYM{i}", settings) for i in range(args.symbols)]

    bars = anomalies = 0
    started = time.perf_counter()
    for r in range(rounds):
        part = slice(r * args.batch, (r + 1) * args.batch)
        batch_ts = ts[part]
        for pipeline, (price, size) in zip(pipelines, feeds, strict=True):
            out = pipeline.on_trades(batch_ts, price[part], size[part])
            bars += len(out.bars)
            anomalies += len(out.anomalies)
    elapsed = time.perf_counter() - started

    ticks = rounds * args.batch * args.symbols
    print(
        f"{ticks:,} ticks, {args.symbols} symbols, batches of {args.batch}: "
        f"{elapsed:.2f} s, {ticks / elapsed:,.0f} ticks/s "
        f"({bars:,} bars, {anomalies:,} anomalies)"
    )


if __name__ == "__main__":
    main()
