"""Which flushes of a paced run were slow, and in which stage: what a p99 is made of.

Runs the daemon (`bench_e2e`) over the bench workload paced at `--rate` ticks/s offered, like
`latency_probe`, and times every `StreamRouter._flush` (wall and the thread's CPU time) with the
CPU time of its stages: grouping (`Grouped.of`), the steady step (`take_steady`), its closing
bars, its accounting, the trade keys and bulk Arrow conversion (`Grouped.finish`), the rows
written (`_emit_many`, with the writers' conversion of buffered rows to Arrow), the hand-overs.
Each stage's mean CPU a flush is printed (at a trickle, what one frame's flush is made of);
a flush over `--over` ms is printed with its stages; a stage's time far above its usual share
names the stall. The fourteenth round found three this way (docs/performance.md, "Loop stalls
and warm-up").

    .venv/bin/python -m benchmarks.slow_flushes [--rate 100000] [--ticks 300000]
        [--symbols 200] [--over 6] [--config config.toml]
"""

from __future__ import annotations

import argparse
import functools
import inspect
import logging
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest import router
from ingest.batch import Grouped
from ingest.bench.stages import bench_e2e
from ingest.bench.workload import make_workload
from ingest.config import load_settings
from ingest.logconfig import configure_logging
from storage.parquet import TableWriter

if TYPE_CHECKING:
    from collections.abc import Callable

STAGES: dict[str, tuple[Any, str]] = {
    "group": (Grouped, "of"),
    "steady": (router, "take_steady"),
    "closing": (router.StreamRouter, "_closing_bars"),
    "account": (router.StreamRouter, "_account_steady"),
    "finish": (Grouped, "finish"),
    "rows": (router.StreamRouter, "_emit_many"),
    "to_arrow": (TableWriter, "_compact_buffer"),
    "hand_over": (router.StreamRouter, "_hand_over"),
}
"""Stage name: (owner, attribute) of the function timed, each call's CPU time added up."""


@dataclass(frozen=True)
class Flush:
    """One flush: when it began (s into the run), its wall and CPU ms, messages, stage CPU ms."""

    at: float
    wall_ms: float
    cpu_ms: float
    messages: int
    stages: dict[str, float]


def _timed(current: Counter[str], name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """`function`, adding each call's CPU time to `current[name]` (coroutines awaited)."""

    def note(started: int) -> None:
        current[name] += time.thread_time_ns() - started

    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def awaited(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time_ns()
            try:
                return await function(*args, **kwargs)
            finally:
                note(started)

        return awaited

    @functools.wraps(function)
    def called(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time_ns()
        try:
            return function(*args, **kwargs)
        finally:
            note(started)

    return called


def record(rate: float, ticks: int, symbols: int, config: Path | None) -> list[Flush]:
    """One paced run, every flush of it timed."""
    settings = load_settings(config)
    workload = make_workload(ticks, symbols)
    current: Counter[str] = Counter()
    flushes: list[Flush] = []
    # As defined (a classmethod as its descriptor), to be put back as they were.
    originals = {name: vars(owner)[attr] for name, (owner, attr) in STAGES.items()}
    flush = router.StreamRouter._flush

    async def timed_flush(self: router.StreamRouter, pending: dict[str, Any]) -> None:
        messages = sum(len(arrivals.records) for arrivals in pending.values())
        current.clear()
        wall, cpu = time.perf_counter(), time.thread_time()
        await flush(self, pending)
        flushes.append(
            Flush(
                wall,
                (time.perf_counter() - wall) * 1e3,
                (time.thread_time() - cpu) * 1e3,
                messages,
                {name: ns / 1e6 for name, ns in current.items()},
            )
        )

    for name, (owner, attr) in STAGES.items():
        setattr(owner, attr, _timed(current, name, getattr(owner, attr)))
    router.StreamRouter._flush = timed_flush  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as scratch:
            bench_e2e(workload, settings, Path(scratch), rate=rate)
    finally:
        router.StreamRouter._flush = flush  # type: ignore[method-assign]
        for name, (owner, attr) in STAGES.items():
            setattr(owner, attr, originals[name])
    start = flushes[0].at if flushes else 0.0
    return [Flush(f.at - start, f.wall_ms, f.cpu_ms, f.messages, f.stages) for f in flushes]


def stage_means(flushes: list[Flush]) -> dict[str, float]:
    """Each stage's mean CPU ms a flush, over every flush (0 where a flush had none of it)."""
    n = max(len(flushes), 1)
    return {name: sum(f.stages.get(name, 0.0) for f in flushes) / n for name in STAGES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100_000.0)
    parser.add_argument("--ticks", type=int, default=300_000)
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--over", type=float, default=6.0, help="print flushes over this (ms)")
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args()
    configure_logging(level=logging.WARNING)
    flushes = record(args.rate, args.ticks, args.symbols, args.config)
    walls = sorted(f.wall_ms for f in flushes)
    print(
        f"{len(flushes):,} flushes at {args.rate:,.0f} ticks/s offered: wall p50 "
        f"{statistics.median(walls):.2f} ms, p99 {walls[len(walls) * 99 // 100]:.2f}, "
        f"max {walls[-1]:.2f}"
    )
    means = "  ".join(f"{name} {ms:.3f}" for name, ms in stage_means(flushes).items())
    print(f"  CPU p50 {statistics.median(f.cpu_ms for f in flushes):.2f} ms; mean ms: {means}")
    for f in flushes:
        if f.wall_ms > args.over:
            stages = "  ".join(f"{name} {ms:.1f}" for name, ms in f.stages.items() if ms >= 0.1)
            print(
                f"  {f.at:6.3f} s  wall {f.wall_ms:5.1f} ms  cpu {f.cpu_ms:5.1f}  "
                f"{f.messages:5d} msgs  {stages}"
            )


if __name__ == "__main__":
    main()
