"""Where a paced run's frame latency comes from: the percentiles and the collector's pauses.

Runs the daemon (`bench_e2e`) over the bench workload paced at `--rate` ticks/s offered, like
the latency line of `ingest bench`, and times every garbage collection during the run with
`gc.callbacks`: how many of each generation, and the longest. A full collection stops the
event loop, so one of tens of milliseconds shows up directly as the p99. This is how the
daemon's collector thresholds (`ingest/collector.py`) were found.

    .venv/bin/python -m benchmarks.latency_probe [--rate 100000] [--ticks 300000]
        [--symbols 200] [--config config.toml]
"""

from __future__ import annotations

import argparse
import gc
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.bench.stages import E2EResult, bench_e2e
from ingest.bench.workload import make_workload
from ingest.config import load_settings
from ingest.logconfig import configure_logging


@dataclass
class CollectorPauses:
    """Collections per generation and their longest pause (seconds), while `armed`."""

    counts: dict[int, int] = field(default_factory=dict)
    longest: dict[int, float] = field(default_factory=dict)
    armed: bool = False
    _started: float = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        """A `gc.callbacks` hook: called at the start and the stop of every collection."""
        if phase == "start":
            self._started = time.perf_counter()
        elif self.armed:
            generation = int(info["generation"])
            pause = time.perf_counter() - self._started
            self.counts[generation] = self.counts.get(generation, 0) + 1
            self.longest[generation] = max(self.longest.get(generation, 0.0), pause)


def probe(
    rate: float, ticks: int, symbols: int, config: Path | None
) -> tuple[E2EResult, CollectorPauses]:
    """One paced run, with the collections it went through."""
    settings = load_settings(config)
    workload = make_workload(ticks, symbols)
    pauses = CollectorPauses()
    gc.callbacks.append(pauses)
    try:
        pauses.armed = True
        with tempfile.TemporaryDirectory() as scratch:
            result = bench_e2e(workload, settings, Path(scratch), rate=rate)
    finally:
        gc.callbacks.remove(pauses)
    return result, pauses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100_000.0)
    parser.add_argument("--ticks", type=int, default=300_000)
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args()
    configure_logging(level=logging.WARNING)
    result, pauses = probe(args.rate, args.ticks, args.symbols, args.config)
    print(
        f"{args.rate:,.0f} ticks/s offered over {args.symbols} symbols: "
        f"p50 {result.p50_ms:.1f} ms  p99 {result.p99_ms:.1f} ms  max {result.max_ms:.1f} ms"
    )
    for generation in sorted(pauses.counts):
        print(
            f"  gen{generation} collections {pauses.counts[generation]:>6}"
            f"  longest {pauses.longest[generation] * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main()
