"""Which callbacks of the event loop ran long in a paced run: the stalls outside any flush.

`slow_flushes` times the router's flushes; a frame also waits for whatever else holds the
loop. This runs the daemon (`bench_e2e`) over the bench workload paced at `--rate` ticks/s
offered and times every callback the event loop runs (`asyncio.Handle._run`: a task's step,
wall and the thread's CPU time), naming the coroutines the task resumed from. A callback over
`--over` ms is printed; wall time far above CPU time is the GIL held by another thread. The
fifteenth round found the trades seal's 20-35 ms this way (docs/performance.md, "Bars in
arrays, and seals off the loop").

    .venv/bin/python -m benchmarks.slow_callbacks [--rate 100000] [--ticks 800000]
        [--symbols 200] [--over 6] [--config config.toml]
"""

from __future__ import annotations

import argparse
import asyncio.events
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.bench.stages import bench_e2e
from ingest.bench.workload import make_workload
from ingest.config import load_settings
from ingest.logconfig import configure_logging


@dataclass(frozen=True)
class Callback:
    """One slow callback: when it began (s into the run), wall and CPU ms, what it resumed."""

    at: float
    wall_ms: float
    cpu_ms: float
    resumed: str
    """The awaiting coroutines of the task it stepped, outermost first ("a>b>c")."""


def _awaiting(handle: asyncio.events.Handle) -> str:
    """The chain of coroutines a task's step resumes from; the callback itself otherwise."""
    owner = getattr(handle._callback, "__self__", None)  # type: ignore[attr-defined]
    get_coro = getattr(owner, "get_coro", None)
    if get_coro is None:
        return repr(handle._callback)  # type: ignore[attr-defined]
    names: list[str] = []
    coro: Any = get_coro()
    while coro is not None and hasattr(coro, "cr_code"):
        names.append(coro.cr_code.co_qualname)
        coro = coro.cr_await
    return ">".join(names[1:] or names)


def record(
    rate: float, ticks: int, symbols: int, config: Path | None, over_ms: float
) -> list[Callback]:
    """One paced run; every callback over `over_ms` of wall time, in order."""
    settings = load_settings(config)
    workload = make_workload(ticks, symbols)
    slow: list[Callback] = []
    run = asyncio.events.Handle._run

    def timed(handle: asyncio.events.Handle) -> None:
        resumed = _awaiting(handle)
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            run(handle)
        finally:
            took = time.perf_counter() - wall
            if took * 1e3 > over_ms:
                cpu_ms = (time.thread_time() - cpu) * 1e3
                slow.append(Callback(wall, took * 1e3, cpu_ms, resumed))

    asyncio.events.Handle._run = timed  # type: ignore[method-assign,assignment]
    try:
        with tempfile.TemporaryDirectory() as scratch:
            started = time.perf_counter()
            bench_e2e(workload, settings, Path(scratch), rate=rate)
    finally:
        asyncio.events.Handle._run = run  # type: ignore[method-assign]
    return [Callback(c.at - started, c.wall_ms, c.cpu_ms, c.resumed) for c in slow]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100_000.0)
    parser.add_argument("--ticks", type=int, default=800_000)
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--over", type=float, default=6.0, help="print callbacks over this (ms)")
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args()
    configure_logging(level=logging.WARNING)
    slow = record(args.rate, args.ticks, args.symbols, args.config, args.over)
    print(f"{len(slow)} callbacks over {args.over} ms at {args.rate:,.0f} ticks/s offered")
    for c in slow:
        print(f"  {c.at:7.3f} s  wall {c.wall_ms:6.1f} ms  cpu {c.cpu_ms:6.1f}  {c.resumed}")


if __name__ == "__main__":
    main()
