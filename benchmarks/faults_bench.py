"""What the fault handling costs, and how memory behaves under a burst on a slow disk.

Part 1, per message on the hot path: the timestamp screen (per frame), the router's newest-stamp
tracking (per symbol batch) and the corrections memory (per stock trade). Part 2: the whole
daemon over a burst of stock trade frames while every Parquet file takes `--slow` seconds longer
to write, once per backpressure policy, sampling RSS every 0.5 s:

    .venv/bin/python -m benchmarks.faults_bench [--frames 4000] [--slow 0.2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from operator import attrgetter
from pathlib import Path
from typing import Any

import anyio
import msgspec
import numpy as np

import storage.parquet
from ingest.app import run_daemon
from ingest.config import settings_from_mapping
from ingest.metrics import Metrics
from ingest.screen import screen_frame
from ingest.trade_memory import TradeMemory, trade_keys, trade_records
from streams.base import Frame
from streams.messages import FrameDecoder, StockTrade
from tests.faults.burst import BurstSource, burst_symbols


def per_message_costs(rounds: int = 20_000, size: int = 100) -> None:
    frame = [
        {
            "T": "t",
            "S": "AAPL",
            "i": k,
            "x": "V",
            "p": 100.0 + k / 100,
            "s": 100,
            "t": "2024-07-01T14:30:00.123456789Z",
            "c": ["@"],
            "z": "C",
        }
        for k in range(size)
    ]
    raw = msgspec.json.encode(frame)
    now = time.time_ns()
    messages = FrameDecoder("stocks").decode(raw, now).messages
    started = time.perf_counter()
    for _ in range(rounds):
        screen_frame(Frame("stocks", now, messages))
    screen = (time.perf_counter() - started) / rounds / size * 1e9
    stamp = attrgetter("t")
    seen: dict[str, str] = {}
    started = time.perf_counter()
    for _ in range(rounds):  # what the router does per symbol batch and table
        last = stamp(messages[-1])
        if last > seen.get("trades", ""):
            seen["trades"] = last
    newest = (time.perf_counter() - started) / rounds / size * 1e9
    memory = TradeMemory(10_000)
    trades: list[Any] = [m for m in messages if isinstance(m, StockTrade)]
    keys = trade_keys(trades)
    ts = np.arange(size, dtype=np.int64)
    price = np.ones(size)
    started = time.perf_counter()
    for n in range(rounds):  # records are built once per flush, then copied in per symbol
        memory.remember(n * size, trade_records(keys, ts, price, price))
    remember = (time.perf_counter() - started) / rounds / size * 1e9
    print(f"timestamp screen       {screen:6.1f} ns/message (frames of {size})")
    print(f"gap-start tracking     {newest:6.1f} ns/message (batches of {size})")
    print(f"corrections memory     {remember:6.1f} ns/stock trade")


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


async def burst(root: Path, policy: str, frames: int) -> dict[str, Any]:
    settings = settings_from_mapping(
        {
            "ingest": {"data_dir": str(root), "streams": ["stocks"], "source": "replay"},
            "streams": {"stocks": {"symbols": list(burst_symbols(20))}},
            "server": {"listen": ""},
            "storage": {
                "queue_size": 64,
                "roll_rows": 20_000,
                "roll_seconds": 3600,
                "backpressure": policy,
                "fsync": "never",
            },
            "pipeline": {"bars": ["time:1m"]},
        }
    )
    source = BurstSource(frames=frames, symbols=20, per_symbol=5)
    metrics = Metrics()
    samples: list[float] = []

    async def sample() -> None:
        while True:
            samples.append(await anyio.to_thread.run_sync(rss_mb))
            await anyio.sleep(0.5)

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(sample)
        await run_daemon(settings, source, metrics=metrics)
        tg.cancel_scope.cancel()
    return {
        "policy": policy,
        "sent": source.sent,
        "seconds": time.monotonic() - started,
        "dropped": metrics.dropped.get("stocks"),
        "blocked": metrics.source_blocked.get("stocks"),
        "rss": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4000)
    parser.add_argument("--slow", type=float, default=0.2)
    args = parser.parse_args()
    per_message_costs()
    real = storage.parquet.write_parquet_atomically

    def slow(*a: Any, **k: Any) -> None:
        time.sleep(args.slow)
        real(*a, **k)

    storage.parquet.write_parquet_atomically = slow
    for policy in ("block", "drop"):
        with tempfile.TemporaryDirectory() as tmp:
            result = anyio.run(burst, Path(tmp), policy, args.frames)
        rss = result["rss"]
        print(
            f"{policy:5} {result['sent']:,} trades in {result['seconds']:.1f} s, "
            f"dropped {int(result['dropped']):,}, source waited {result['blocked']:.1f} s; "
            f"RSS MB start {rss[0]:.0f}, peak {max(rss):.0f}, end {rss[-1]:.0f}; "
            f"every 0.5 s: {[round(x) for x in rss[:: max(1, len(rss) // 12)]]}"
        )


if __name__ == "__main__":
    main()
