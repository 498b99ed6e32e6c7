"""The benchmark's stages. Each runs the daemon's own code on the workload and times it.

- decode: `FrameDecoder.decode` over every frame, as a connection does.
- pipeline: `SymbolPipeline.on_trades` over the batches the router hands the symbol tasks when it
  is saturated (flushes of `pending_limit` messages, split by symbol).
- storage: the trades table writer (`put` per symbol batch, Arrow conversion, Parquet, rename).
- e2e: the whole daemon (`run_daemon`) fed by an in-process source: decode, journal,
  demultiplex, symbol tasks, pipeline, writers. Flat out for throughput, or paced at an offered
  rate for latency.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import numpy as np

from ingest.app import run_daemon
from ingest.metrics import Metrics
from ingest.pipeline import SymbolPipeline, indicator_columns
from ingest.router import pending_limit
from storage.parquet import open_dataset
from streams.base import Frame
from streams.messages import FrameDecoder

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    import numpy.typing as npt
    from anyio.abc import TaskStatus

    from ingest.bench.workload import Workload
    from ingest.config import PipelineSettings, Settings, StreamName
    from streams.base import FrameSink

__all__ = ["E2EResult", "bench_decode", "bench_e2e", "bench_pipeline", "bench_storage"]


def bench_decode(workload: Workload) -> float:
    """Messages decoded per second."""
    decoder = FrameDecoder(workload.stream, workload.encoding)
    decode = decoder.decode
    started = time.perf_counter()
    for raw in workload.frames:
        decode(raw, 0)
    return workload.ticks / (time.perf_counter() - started)


def saturated_batches(workload: Workload) -> list[tuple[int, npt.NDArray[np.int64]]]:
    """(symbol, positions of its trades) per batch, as the router hands them over when saturated.

    The router flushes every `pending_limit` messages, one batch per symbol in first-seen order.
    """
    out: list[tuple[int, npt.NDArray[np.int64]]] = []
    index = workload.symbol_index.tolist()
    step = pending_limit(len(workload.symbols))
    for start in range(0, workload.ticks, step):
        groups: dict[int, list[int]] = {}
        for position in range(start, min(start + step, workload.ticks)):
            groups.setdefault(index[position], []).append(position)
        out += [(symbol, np.array(where)) for symbol, where in groups.items()]
    return out


def bench_pipeline(workload: Workload, settings: PipelineSettings) -> tuple[float, float]:
    """Ticks per second through every symbol's pipeline, and the mean batch size fed."""
    batches = saturated_batches(workload)
    ts, price, size = workload.ts, workload.price, workload.size
    feed = [(s, ts[where], price[where], size[where]) for s, where in batches]
    pipelines = [SymbolPipeline(name, settings) for name in workload.symbols]
    started = time.perf_counter()
    for s, t, p, q in feed:
        pipelines[s].on_trades(t, p, q)
    elapsed = time.perf_counter() - started
    return workload.ticks / elapsed, workload.ticks / len(feed)


def bench_storage(workload: Workload, settings: Settings, root: Path) -> tuple[float, float]:
    """Trade rows per second through the trades writer into Parquet, and bytes per row."""
    decoder = FrameDecoder(workload.stream, workload.encoding)
    messages = [m for raw in workload.frames for m in decoder.decode(raw, 1).messages]
    by_batch = [[messages[i] for i in where.tolist()] for _, where in saturated_batches(workload)]
    storage = dataclasses.replace(settings.storage, roll_rows=max(settings.storage.roll_rows, 1))

    async def write() -> None:
        async with open_dataset(
            root,
            storage,
            writer_id="bench",
            metadata={},
            indicator_columns=indicator_columns(settings.pipeline),
        ) as dataset:
            writer = dataset.writer(workload.stream, "trades")
            for batch in by_batch:
                await writer.put(batch)

    started = time.perf_counter()
    anyio.run(write)
    elapsed = time.perf_counter() - started
    return workload.ticks / elapsed, _bytes_per_row(root / workload.stream / "trades", workload)


def _bytes_per_row(folder: Path, workload: Workload) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*.parquet")) / workload.ticks


@dataclass(frozen=True, slots=True)
class E2EResult:
    """What one whole-daemon run measured."""

    ticks_per_s: float
    mean_batch: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    parquet_bytes_per_trade: float
    decode_msgs_per_s: float
    """Messages decoded per second of the source's decode calls, inside the run."""
    loop_busy: float
    """The event loop thread's CPU time over the wall time while the frames went in (0-1)."""


class BenchSource:
    """Hands the workload's frames to the daemon, decoded as a connection would.

    It also times what only the run can show: its decode calls among everything else the loop
    does, and how busy the loop's thread is while the frames go in (idle when paced with room).
    """

    name = "bench"

    def __init__(self, workload: Workload, rate: float | None) -> None:
        self._workload = workload
        self._rate = rate
        self.decoded = 0
        """Messages decoded so far."""
        self.decode_ns = 0
        """Time spent in `FrameDecoder.decode`, in nanoseconds."""
        self.loop_busy = float("nan")
        """The loop thread's CPU share while the frames went in; set once they all have."""

    async def run(
        self, sinks: Mapping[StreamName, FrameSink], *, task_status: TaskStatus[None]
    ) -> None:
        stream = self._workload.stream
        sink = sinks[stream]
        encoding = self._workload.encoding
        decode = FrameDecoder(stream, encoding).decode
        task_status.started()
        frames = self._workload.frames
        interval = 0.0 if self._rate is None else len(self._workload.ts) / len(frames) / self._rate
        started, cpu = time.monotonic(), time.thread_time()
        for n, raw in enumerate(frames):
            if interval:
                delay = started + n * interval - time.monotonic()
                if delay > 0:
                    await anyio.sleep(delay)
            recv_ns = time.time_ns()
            before = time.perf_counter_ns()
            decoded = decode(raw, recv_ns)
            self.decode_ns += time.perf_counter_ns() - before
            self.decoded += len(decoded.messages)
            frame = Frame(stream, recv_ns, decoded.messages, decoded.rejects, raw, encoding)
            await sink(frame)
        wall = time.monotonic() - started
        self.loop_busy = min((time.thread_time() - cpu) / wall, 1.0) if wall > 0 else 1.0


def bench_e2e(
    workload: Workload, settings: Settings, root: Path, rate: float | None = None
) -> E2EResult:
    """Run the daemon over the workload, paced at `rate` ticks/s offered or flat out."""
    stream = workload.stream
    streams = dict(settings.streams)
    streams[stream] = dataclasses.replace(streams[stream], symbols=tuple(workload.symbols))
    settings = settings.replace(
        ingest=dataclasses.replace(settings.ingest, data_dir=root, streams=(stream,)),
        streams=streams,
        server=dataclasses.replace(settings.server, listen=""),
    )
    metrics = Metrics()
    source = BenchSource(workload, rate)
    started = time.perf_counter()
    anyio.run(lambda: run_daemon(settings, source, metrics=metrics, progress_seconds=3600.0))
    elapsed = time.perf_counter() - started
    latency = metrics.pipeline_latency
    batches = sum(latency.counts.get((stream,), [0]))
    return E2EResult(
        ticks_per_s=workload.ticks / elapsed,
        mean_batch=workload.ticks / max(batches, 1),
        p50_ms=latency.quantile(0.5, stream) * 1e3,
        p99_ms=latency.quantile(0.99, stream) * 1e3,
        max_ms=latency.maxima.get((stream,), float("nan")) * 1e3,
        parquet_bytes_per_trade=_bytes_per_row(root / stream / "trades", workload),
        decode_msgs_per_s=source.decoded / max(source.decode_ns / 1e9, 1e-9),
        loop_busy=source.loop_busy,
    )
