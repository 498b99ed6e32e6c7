"""Backpressure: a slow disk under a burst keeps every queue bounded and memory flat.

A burst source delivers stock trade frames as fast as the daemon takes them while every Parquet
file takes 0.2 s longer to write. Sampled every 50 ms: the intake's frames, the symbol queues'
batches and the writer's buffered rows never pass their bounds; RSS grows by less than a
generous limit (the figures over longer bursts are in docs/reliability.md). `block` keeps every
message and pushes back on the source; `drop` never makes it wait and counts what it drops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from ingest.app import run_daemon
from ingest.config import Settings, settings_from_mapping
from ingest.metrics import Metrics
from tests.dataset import count
from tests.faults.burst import BurstSource, burst_symbols
from tests.faults.slowdisk import slow_disk

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

SYMBOLS = 20
QUEUE = 8
ROLL_ROWS = 2000
HIGH_WATER = 10_000  # max(4 x roll_rows, 10000): the writer's buffer bound
RSS_GROWTH_LIMIT_MB = 150.0


def burst_settings(root: Path, policy: str) -> Settings:
    return settings_from_mapping(
        {
            "ingest": {"data_dir": str(root), "streams": ["stocks"], "source": "replay"},
            "streams": {"stocks": {"symbols": list(burst_symbols(SYMBOLS))}},
            "server": {"listen": ""},
            "storage": {
                "queue_size": QUEUE,
                "roll_rows": ROLL_ROWS,
                "roll_seconds": 3600,
                "backpressure": policy,
                "fsync": "never",
            },
            "pipeline": {"bars": ["time:1m"]},
        }
    )


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


async def run_burst(settings: Settings, source: BurstSource) -> tuple[Metrics, dict[str, Any]]:
    """Run the daemon over the burst, sampling depths and RSS; the metrics and the peaks."""
    metrics = Metrics()
    peaks: dict[str, Any] = {"intake": 0.0, "queues": 0.0, "writer": 0.0, "rss": []}

    async def sample() -> None:
        while True:
            peaks["intake"] = max(peaks["intake"], metrics.intake_depth.get("stocks"))
            peaks["queues"] = max(peaks["queues"], metrics.queue_depth.get("stocks"))
            peaks["writer"] = max(peaks["writer"], metrics.writer_buffered.get("stocks", "trades"))
            peaks["rss"].append(await anyio.to_thread.run_sync(rss_mb))
            await anyio.sleep(0.05)

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sample)
            await run_daemon(settings, source, metrics=metrics, sample_seconds=0.05)
            tg.cancel_scope.cancel()
    return metrics, peaks


class TestSlowDisk:
    def test_block_policy_keeps_every_message_within_bounds(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`block`: all 100,000 trades written, queues within bounds, the source waited."""
        slow_disk(monkeypatch, 0.2)
        source = BurstSource(frames=1000, symbols=SYMBOLS, per_symbol=5)
        metrics, peaks = anyio.run(run_burst, burst_settings(tmp_path, "block"), source)
        assert count(tmp_path, "stocks", "trades") == source.sent == 100_000
        assert metrics.dropped.get("stocks") == 0
        assert metrics.source_blocked.get("stocks") > 0
        assert 0 < peaks["intake"] <= QUEUE
        assert peaks["queues"] <= QUEUE * SYMBOLS
        assert 0 < peaks["writer"] <= HIGH_WATER + SYMBOLS * 5
        rss = peaks["rss"]
        assert max(rss) - rss[0] < RSS_GROWTH_LIMIT_MB

    def test_drop_policy_never_waits_and_counts_what_it_drops(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`drop`: the source never waits; rows written plus messages dropped = messages sent."""
        slow_disk(monkeypatch, 0.2)
        source = BurstSource(frames=1000, symbols=SYMBOLS, per_symbol=5)
        metrics, peaks = anyio.run(run_burst, burst_settings(tmp_path, "drop"), source)
        written = count(tmp_path, "stocks", "trades")
        dropped = metrics.dropped.get("stocks")
        assert dropped > 0
        assert written + dropped == source.sent
        # Never a wait on a queue; a hand-over slower than 1 ms on a busy machine may count.
        assert metrics.source_blocked.get("stocks") < 0.5
        assert peaks["intake"] <= QUEUE
        assert peaks["queues"] <= QUEUE * SYMBOLS
        assert max(peaks["rss"]) - peaks["rss"][0] < RSS_GROWTH_LIMIT_MB
