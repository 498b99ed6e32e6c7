"""The cost of a flush per symbol it touches: what sets latency when the loop is loaded.

At a trickle each flush holds one frame; under load, what arrived during the last flush. Either
way a flush costs its trades plus a fixed cost for each symbol it touches (docs/performance.md,
Latency), and at 100k ticks/s offered over 200 symbols the per-symbol part dominates. This runs
a real `StreamRouter` (symbol tasks, the steady step, the writers) and times `_flush` alone on
flushes of `--per-symbol` x `--symbols` trades of the benchmark workload, once every symbol's
anomaly window is full, in CPU time of the thread (less noisy than wall time on a shared
machine). Whatever the flush hands to a symbol task runs after the timing, untimed. Also timed:
how far into each flush its steady step observes its batches' latency (what a steady batch's
latency includes of the flush; the rest of the flush only delays the next one), and what one
reference call costs there (the flush's symbols dictionary-encoded by Arrow, as `ingest.batch`
groups them), made twice in a row: cold, in the flush's caches, then warm at once.

With `--gap-ms`, the loop sleeps that long before each flush, as it does between frames at a
trickle; with `--busy` too, it busy-waits instead, so the core never idles. On this shared
machine what a flush had in the caches is gone within milliseconds either way, and the same
flush costs up to four times the CPU (docs/performance.md, A cold flush).

    .venv/bin/python -m benchmarks.flush_cost [--per-symbol 5] [--symbols 200]
        [--ticks 200000] [--gap-ms 0 [--busy]]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa

from benchmarks.stocks_router import stocks_router
from ingest.batch import Arrivals
from ingest.bench.workload import make_workload
from ingest.logconfig import configure_logging
from ingest.metrics import Histogram
from streams.messages import AnyMessage, FrameDecoder

WARM_TRADES = 40
"""Trades a symbol before timing starts: its anomaly window (20) filled, its bars opened."""


@dataclass(frozen=True)
class FlushCost:
    """The timed flushes: per flush, its CPU time and the symbols it touched."""

    seconds: list[float]
    touched: list[int]
    trades: int
    observed: list[float]
    """Of the flushes whose steady step took batches: CPU seconds from its start to there."""
    reference: list[tuple[float, float]]
    """Of the same flushes: the reference call's seconds there, cold then warm."""

    def per_symbol_us(self) -> list[float]:
        """Each flush's cost divided by the symbols it touched, sorted."""
        return sorted(s / n * 1e6 for s, n in zip(self.seconds, self.touched, strict=True))


class _Stamped(Histogram):
    """The pipeline-latency histogram, noting the thread's CPU time of each bulk observation.

    Only the steady step observes in bulk (`observe_many`); a symbol task observes its batch.
    """

    def __init__(self, like: Histogram) -> None:
        super().__init__(like.name, like.help, like.label_names, like.buckets)
        self.at: list[float] = []
        self.symbols: list[str] = []
        """The flush's symbols, for the reference call."""
        self.reference: list[tuple[float, float]] = []
        self.spent = 0.0
        """CPU seconds of the reference calls, taken out of the flush's time."""

    def observe_many(self, *args: Any, **kwargs: Any) -> None:
        self.at.append(time.thread_time())
        if len(self.at) == 1:
            times = [time.thread_time()]
            for _ in range(2):
                pa.array(self.symbols, pa.string()).dictionary_encode()
                times.append(time.thread_time())
            self.reference.append((times[1] - times[0], times[2] - times[1]))
            self.spent = times[2] - times[0]
        super().observe_many(*args, **kwargs)


async def _timed(
    root: Path, symbols: list[str], flushes: list[list[AnyMessage]], gap: float, busy: bool
) -> FlushCost:
    warm = WARM_TRADES * len(symbols) // len(flushes[0]) + 1
    seconds: list[float] = []
    touched: list[int] = []
    observed: list[float] = []
    reference: list[tuple[float, float]] = []
    async with stocks_router(root, symbols) as router:
        stamps = router._metrics.pipeline_latency = _Stamped(router._metrics.pipeline_latency)
        async with anyio.create_task_group() as group:
            await group.start(router.run)
            for i, messages in enumerate(flushes):
                pending = Arrivals()
                pending.records += messages
                pending.symbols += [m.S for m in messages]  # type: ignore[union-attr]
                stamps.at.clear()
                stamps.reference.clear()
                stamps.spent = 0.0
                stamps.symbols = pending.symbols
                if gap and busy:
                    _busy_wait(gap)
                elif gap:
                    await anyio.sleep(gap)
                started = time.thread_time()
                await router._flush({"trades": pending})
                elapsed = time.thread_time() - started - stamps.spent
                await anyio.wait_all_tasks_blocked()  # the symbol tasks catch up, untimed
                if i >= warm:
                    seconds.append(elapsed)
                    touched.append(len(set(pending.symbols)))
                    if stamps.at:
                        observed.append(stamps.at[0] - started)
                        reference += stamps.reference
            router.close()
    return FlushCost(seconds, touched, len(flushes[0]), observed, reference)


def _busy_wait(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def measure(
    per_symbol: float, symbols: int, ticks: int, gap: float = 0.0, *, busy: bool = False
) -> FlushCost:
    """One pass over the workload in flushes of `per_symbol` trades a symbol, `gap` s apart."""
    workload = make_workload(ticks, symbols)
    decode = FrameDecoder("stocks", "json").decode
    messages = [m for frame in workload.frames for m in decode(frame, time.time_ns()).messages]
    step = max(1, round(per_symbol * symbols))
    flushes = [messages[i : i + step] for i in range(0, len(messages) - step + 1, step)]
    with tempfile.TemporaryDirectory() as scratch:
        return anyio.run(_timed, Path(scratch), list(workload.symbols), flushes, gap, busy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-symbol", type=float, default=5.0, help="trades a symbol a flush")
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--ticks", type=int, default=200_000)
    parser.add_argument("--gap-ms", type=float, default=0.0, help="idle before each flush")
    parser.add_argument("--busy", action="store_true", help="busy-wait the gap, not sleep")
    args = parser.parse_args()
    if not 0 <= args.gap_ms < 10_000:
        parser.error("--gap-ms must be between 0 and 10000")
    configure_logging(level=logging.WARNING)
    cost = measure(args.per_symbol, args.symbols, args.ticks, args.gap_ms / 1e3, busy=args.busy)
    per_symbol = cost.per_symbol_us()
    n = len(per_symbol)
    print(
        f"{n:,} flushes of {cost.trades:,} trades, {statistics.mean(cost.touched):.0f} symbols "
        f"touched: median {statistics.median(cost.seconds) * 1e3:.2f} ms a flush "
        f"(mean {statistics.mean(cost.seconds) * 1e3:.2f}), "
        f"{per_symbol[n // 10]:.1f} us a symbol at p10, {per_symbol[n // 2]:.1f} at p50"
    )
    if cost.observed:
        print(
            f"  the steady step's latency observed {statistics.median(cost.observed) * 1e3:.2f} "
            f"ms into the flush (median of {len(cost.observed):,})"
        )
        cold, warm = (statistics.median(t) * 1e6 for t in zip(*cost.reference, strict=True))
        print(f"  a reference call there: {cold:.1f} us cold, {warm:.1f} us repeated at once")


if __name__ == "__main__":
    main()
