"""The fixed cost of a symbol call: what the router's symbol task spends on one small batch.

When the loop keeps up (a paced run), each symbol's batch holds a trade or two, and a frame's
latency is set by how many symbol calls a flush makes times what each costs (the threshold
model in docs/performance.md#latency). This times `StreamRouter._process` alone -- the pipeline
call, the corrections memory, the bookkeeping and metrics, writing any bars -- on the flushes a
stream of `--per-symbol` trades a symbol gives, without the hop to the task or the flush
itself. Symbols are called round robin, as a flush does, so each call finds its state as cold
as the other symbols left it.

    .venv/bin/python -m benchmarks.symbol_call [--per-symbol 1] [--symbols 200]
        [--ticks 200000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from benchmarks.stocks_router import stocks_router
from ingest.batch import Arrivals, build_batches
from ingest.bench.workload import make_workload
from ingest.logconfig import configure_logging
from streams.messages import AnyMessage, FrameDecoder


@dataclass(frozen=True)
class CallCost:
    """One timed pass: symbol calls made and their mean cost."""

    calls: int
    trades: int
    us_per_call: float


async def _timed_pass(root: Path, symbols: list[str], flushes: list[list[AnyMessage]]) -> CallCost:
    async with stocks_router(root, symbols) as router:
        pipeline_settings = router._settings.pipeline
        pipelines = {s: router._factory(s, pipeline_settings) for s in symbols}
        memories = {s: router._memory() for s in symbols}
        for symbol in symbols:
            router.symbols.add(symbol)
        calls = trades = 0
        elapsed = 0.0
        for messages in flushes:
            pending = Arrivals()
            pending.records += messages
            pending.symbols += [m.S for m in messages]  # type: ignore[union-attr]
            tables = {"trades": pending}
            flush = build_batches(tables, router._bulk_tables(tables), keyed=True)
            started = time.perf_counter()
            for symbol, batch in flush.batches.items():
                await router._process(symbol, pipelines[symbol], batch, memories[symbol])
            elapsed += time.perf_counter() - started
            calls += len(flush.batches)
            trades += len(messages)
    return CallCost(calls, trades, elapsed / calls * 1e6)


def measure(per_symbol: int, symbols: int, ticks: int, repeat: int) -> list[CallCost]:
    """`repeat` passes over the same workload, each with fresh symbol state."""
    workload = make_workload(ticks, symbols)
    decode = FrameDecoder("stocks", "json").decode
    messages = [m for frame in workload.frames for m in decode(frame, time.time_ns()).messages]
    step = per_symbol * symbols
    flushes = [messages[i : i + step] for i in range(0, len(messages), step)]
    costs = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as scratch:
            costs.append(anyio.run(_timed_pass, Path(scratch), list(workload.symbols), flushes))
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-symbol", type=int, default=1, help="trades a symbol per flush")
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--ticks", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    configure_logging(level=logging.WARNING)
    costs = measure(args.per_symbol, args.symbols, args.ticks, args.repeat)
    each = [c.us_per_call for c in costs]
    first = costs[0]
    print(
        f"{first.calls:,} symbol calls of {first.trades / first.calls:.2f} trades "
        f"({args.symbols} symbols, {args.per_symbol} a symbol per flush): "
        f"{min(each):.1f} us a call at best, median {statistics.median(each):.1f} "
        f"of {len(each)} passes"
    )


if __name__ == "__main__":
    main()
