"""The daemon: one root task group, one child group per stream type, one task per symbol.

Start: journal segments an unclean stop left behind are replayed into the dataset
(`storage.recovery`), the de-duplication filter learns what the dataset holds (`storage.dedup`),
then the source starts. Every frame passes its stream's intake (de-duplicate, queue for the
journal, deliver; `ingest.intake`) on its way to the router; a seal waits for the journal to hold
the frames of its rows.

Shutdown has one path. A signal, `--duration` or the end of a replay sets `stop`; that cancels only
the source (reading stops; a frame being handed over is finished under a shield). Each intake
journals what it holds, each stream's router is then closed, its symbol tasks drain their queues
and flush their open bars as partial, every table writer seals its buffer, and the journal
segments that Parquet now covers are deleted. Nothing received is left unwritten.
"""

from __future__ import annotations

import functools
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import anyio
import structlog

from ingest import __version__
from ingest.arrowpool import daemon_memory_pool
from ingest.collector import daemon_collector
from ingest.config import STREAMS
from ingest.intake import StreamIntake, close_journals, create_segment_writer
from ingest.ledger import DaemonLedger
from ingest.live import LiveHub
from ingest.metrics import Metrics
from ingest.pipeline import SymbolPipeline, indicator_columns
from ingest.router import BarListener, PipelineFactory, StreamRouter
from ingest.screen import quarantine_refused
from ingest.sdnotify import Notifier, run_watchdog
from ingest.server import serve
from ingest.state import DaemonState
from ingest.warmup import load_warmup
from storage.compact import repair_compactions
from storage.dedup import DERIVED_TABLES, DedupFilter
from storage.journal import probe_journal
from storage.parquet import (
    SEAL_GRACE_SECONDS,
    Dataset,
    make_writer_id,
    open_dataset,
    writer_prefix,
)
from storage.quarantine import Quarantine
from storage.recovery import recover_journal
from streams.base import SupportsBarHistory, SupportsLedger

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from anyio.abc import TaskStatus

    from ingest.config import Settings, StreamName
    from storage.journal import SegmentWriter
    from streams.base import Frame, FrameSink, Source

__all__ = ["RunResult", "run_daemon"]

log = structlog.get_logger("app")

PROGRESS_SECONDS: Final = 30.0
SAMPLE_SECONDS: Final = 1.0
"""How often the queue-depth gauges are refreshed."""


@dataclass(slots=True)
class RunResult:
    """What a run did, for the closing summary."""

    data_dir: str
    writer_id: str
    rows: dict[tuple[StreamName, str], int] = field(default_factory=dict)
    files: dict[tuple[StreamName, str], int] = field(default_factory=dict)
    messages: dict[StreamName, int] = field(default_factory=dict)
    quarantined: int = 0
    symbol_failures: int = 0
    seconds: float = 0.0
    recovered_frames: int = 0
    """Frames replayed from the journal at start (after an unclean stop)."""
    duplicates: int = 0
    """Messages dropped because the dataset already held them."""


@dataclass(slots=True)
class _Run:
    """What every part of one run shares: its settings, identity and outlets."""

    settings: Settings
    source: Source
    metrics: Metrics
    notifier: Notifier
    state: DaemonState
    quarantine: Quarantine
    writer_id: str
    metadata: dict[str, str]
    indicators: tuple[str, ...]
    pipeline_factory: PipelineFactory
    on_bar: BarListener | None
    """Told about every closed bar of the live run (not of a recovery replay)."""

    def router(self, stream: StreamName, dataset: Dataset, *, live: bool = True) -> StreamRouter:
        """A stream's router writing to `dataset`; `live`: its bars go to the listeners."""
        return StreamRouter(
            stream,
            self.settings,
            dataset,
            self.quarantine,
            self.metrics,
            pipeline_factory=self.pipeline_factory,
            on_bar=self.on_bar if live else None,
        )

    def dedup_filter(self) -> DedupFilter:
        """A filter that drops what the dataset already holds (seeded by the caller)."""
        settings = self.settings
        time_bars = [b.size for b in settings.pipeline.bars if b.kind == "time"]
        return DedupFilter(
            settings.storage.dedup_horizon,
            self.indicators,
            derived_window_seconds=max(time_bars, default=0.0),
            metrics=self.metrics,
        )

    async def recover(self) -> int:
        """Replay the journal segments an unclean stop left behind; the frames replayed."""
        derived = self.dedup_filter()
        root = self.settings.ingest.data_dir
        await anyio.to_thread.run_sync(derived.seed, root, STREAMS, DERIVED_TABLES)
        return await recover_journal(
            self.settings,
            writer_id=self.writer_id,
            prefix=writer_prefix(self.settings.ingest.shard),
            metadata=self.metadata,
            indicator_columns=self.indicators,
            metrics=self.metrics,
            make_router=functools.partial(self.router, live=False),
            admission=derived.admission,
        )

    def intakes(
        self,
        routers: Mapping[StreamName, StreamRouter],
        dataset: Dataset,
        journals: Mapping[StreamName, SegmentWriter],
        dedup: DedupFilter,
    ) -> dict[StreamName, StreamIntake]:
        """Each stream's way in: de-duplicate, journal, deliver to its router."""
        intakes = {
            stream: StreamIntake(
                stream,
                router.deliver,
                journal=journals.get(stream),
                dedup=dedup,
                settings=self.settings.storage,
                metrics=self.metrics,
                unsealed=functools.partial(_unsealed, router, dataset, stream),
                scale=router.flush_scale,
            )
            for stream, router in routers.items()
        }
        dataset.on_sealed = lambda stream: intakes[stream].notify_sealed()
        dataset.before_seal = lambda stream: intakes[stream].journaled()
        return intakes

    async def prepare_routers(
        self,
        routers: Mapping[StreamName, StreamRouter],
        intakes: Mapping[StreamName, StreamIntake],
        dataset: Dataset,
    ) -> None:
        """What the routers start from: back-fill bookkeeping, each symbol's warm-up closes."""
        settings, source = self.settings, self.source
        if isinstance(source, SupportsLedger):
            ledger = DaemonLedger(settings, routers, intakes, dataset, self.indicators)
            await anyio.to_thread.run_sync(
                ledger.seed,
                settings.ingest.data_dir,
                settings.ingest.streams,
                settings.alpaca.backfill_max_gap,
            )
            source.ledger = ledger
        history = source if isinstance(source, SupportsBarHistory) else None
        for stream, router in routers.items():
            symbols = settings.streams[stream].symbols
            router.warmup = await load_warmup(settings, stream, symbols, history)

    async def run_streams(
        self,
        routers: Mapping[StreamName, StreamRouter],
        intakes: Mapping[StreamName, StreamIntake],
        dataset: Dataset,
        stop: anyio.Event,
        ready: Callable[[], None],
        *,
        progress_seconds: float,
        sample_seconds: float,
    ) -> None:
        """Routers, intakes and the source until the source stops; then drain in that order."""
        metrics, notifier = self.metrics, self.notifier
        async with anyio.create_task_group() as stream_groups:
            for router in routers.values():
                await stream_groups.start(router.run)
            stream_groups.start_soon(
                _sample_queues, routers, intakes, dataset, metrics, stop, sample_seconds
            )
            stream_groups.start_soon(
                _report_progress, routers, metrics, self.state, notifier, stop, progress_seconds
            )
            async with anyio.create_task_group() as intake_group:
                for intake in intakes.values():
                    await intake_group.start(intake.run)
                sinks: Mapping[StreamName, FrameSink] = {
                    s: _timed(i.put, metrics, s) for s, i in intakes.items()
                }
                await _run_source(self.source, sinks, stop, ready)
                self.state.stopping = True
                notifier.stopping()
                log.info("source_stopped", source=self.source.name)
                for intake in intakes.values():
                    intake.close()
            for router in routers.values():
                router.close()
            stop.set()


async def run_daemon(
    settings: Settings,
    source: Source,
    *,
    stop: anyio.Event | None = None,
    duration: float | None = None,
    metrics: Metrics | None = None,
    pipeline_factory: PipelineFactory = SymbolPipeline,
    on_bar: BarListener | None = None,
    on_ready: Callable[[DaemonState], None] | None = None,
    notifier: Notifier | None = None,
    handle_signals: bool = False,
    progress_seconds: float = PROGRESS_SECONDS,
    sample_seconds: float = SAMPLE_SECONDS,
) -> RunResult:
    """Run until `stop` is set, `duration` elapses, a signal arrives, or the source ends.

    Speaks sd_notify through `notifier` (READY once every stream is up, WATCHDOG while alive,
    STATUS with the rates, STOPPING on the way out) and serves `[server] listen`.
    """
    stop = stop or anyio.Event()
    metrics = metrics or Metrics()
    notifier = notifier or Notifier(None)
    state = DaemonState(settings, metrics, source.name)
    hub = LiveHub(metrics)
    streams = settings.ingest.streams
    root = settings.ingest.data_dir

    def publish(stream: StreamName, bars: list[dict[str, Any]]) -> None:
        hub.publish_many(stream, bars)
        if on_bar is not None:
            on_bar(stream, bars)

    def ready() -> None:
        state.ready = True
        notifier.ready()
        notifier.status(f"{len(streams)} streams up: " + ", ".join(streams))
        if on_ready is not None:
            on_ready(state)

    writer_id = make_writer_id(settings.ingest.shard)
    run = _Run(
        settings,
        source,
        metrics,
        notifier,
        state,
        Quarantine(root, writer_id),
        writer_id,
        metadata={
            "ingest.version": __version__,
            "ingest.source": source.name,
            "ingest.simulated": "true" if source.name == "sim" else "false",
            "ingest.writer_id": writer_id,
        },
        indicators=indicator_columns(settings.pipeline),
        pipeline_factory=pipeline_factory,
        on_bar=publish,
    )
    started = time.monotonic()
    log.info("daemon_started", source=source.name, streams=list(streams), data_dir=str(root))
    recovered = 0
    dedup = run.dedup_filter()
    with daemon_collector(), daemon_memory_pool():
        async with anyio.create_task_group() as root_group:
            await root_group.start(run_watchdog, notifier, state.alive)
            state.port = await root_group.start(serve, settings.server, state, metrics, hub)
            if handle_signals:
                root_group.start_soon(_stop_on_signals, stop, root_group.cancel_scope)
            if duration is not None:
                root_group.start_soon(_stop_after, stop, duration)
            await anyio.to_thread.run_sync(_prepare_storage, settings)
            if settings.storage.journal:
                recovered = await run.recover()
            await anyio.to_thread.run_sync(dedup.seed, root, streams)
            journals = {
                stream: create_segment_writer(settings, writer_id, stream)
                for stream in streams
                if settings.storage.journal
            }
            intakes: dict[StreamName, StreamIntake] = {}
            try:
                async with open_dataset(
                    root,
                    settings.storage,
                    writer_id=writer_id,
                    metadata=run.metadata,
                    indicator_columns=run.indicators,
                    metrics=metrics,
                    admission=dedup.admission,
                    on_refused=quarantine_refused(run.quarantine, metrics),
                ) as dataset:
                    routers = {stream: run.router(stream, dataset) for stream in streams}
                    intakes = run.intakes(routers, dataset, journals, dedup)
                    state.attach(routers)
                    await run.prepare_routers(routers, intakes, dataset)
                    await run.run_streams(
                        routers,
                        intakes,
                        dataset,
                        stop,
                        ready,
                        progress_seconds=progress_seconds,
                        sample_seconds=sample_seconds,
                    )
            finally:
                with anyio.move_on_after(SEAL_GRACE_SECONDS, shield=True):
                    await close_journals(intakes, journals)
            root_group.cancel_scope.cancel()  # the timers and signal watcher are done
    result = _result(
        settings, writer_id, dataset, metrics, run.quarantine, time.monotonic() - started
    )
    result.recovered_frames = recovered
    result.duplicates = int(sum(metrics.deduplicated.values.values()))
    log.info(
        "daemon_stopped",
        seconds=round(result.seconds, 1),
        rows=sum(result.rows.values()),
        files=sum(result.files.values()),
        quarantined=result.quarantined,
        symbol_failures=result.symbol_failures,
        recovered_frames=result.recovered_frames,
        duplicates=result.duplicates,
    )
    return result


def _prepare_storage(settings: Settings) -> None:
    """Fail fast if nothing can be written; tidy what an interrupted compaction left."""
    root = settings.ingest.data_dir
    if settings.storage.journal:
        probe_journal(root)
    repair_compactions(root)


def _unsealed(router: StreamRouter, dataset: Dataset, stream: StreamName) -> int | None:
    """Receive time of the oldest frame of `stream` the router or a writer still holds."""
    found = [router.oldest_inflight_ns(), dataset.oldest_unsealed_ns(stream)]
    return min((ns for ns in found if ns is not None), default=None)


async def _run_source(
    source: Source,
    sinks: Mapping[StreamName, FrameSink],
    stop: anyio.Event,
    on_ready: Callable[[], None],
) -> None:
    """Run the source until it ends or `stop` is set, whichever comes first."""
    async with anyio.create_task_group() as group:

        async def cancel_on_stop() -> None:
            await stop.wait()
            group.cancel_scope.cancel()

        async def read(*, task_status: TaskStatus[None]) -> None:
            await source.run(sinks, task_status=task_status)
            group.cancel_scope.cancel()  # input exhausted (replay): shut down

        group.start_soon(cancel_on_stop)
        await group.start(read)
        log.info("streams_ready", streams=list(sinks))
        on_ready()


async def _stop_after(stop: anyio.Event, seconds: float) -> None:
    await anyio.sleep(seconds)
    log.info("duration_elapsed", seconds=seconds)
    stop.set()


async def _stop_on_signals(stop: anyio.Event, root: anyio.CancelScope) -> None:
    """First SIGINT/SIGTERM: graceful stop. A second one, or a drain past the grace: hard stop."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if stop.is_set():
                log.warning("second_signal_received", signal=signal.Signals(signum).name)
                root.cancel()
                return
            log.info("signal_received", signal=signal.Signals(signum).name)
            stop.set()
            break
        with anyio.move_on_after(2 * SEAL_GRACE_SECONDS):
            async for signum in signals:
                log.warning("second_signal_received", signal=signal.Signals(signum).name)
                break
        root.cancel()


async def _sample_queues(
    routers: Mapping[StreamName, StreamRouter],
    intakes: Mapping[StreamName, StreamIntake],
    dataset: Dataset,
    metrics: Metrics,
    stop: anyio.Event,
    every: float,
) -> None:
    """Keep the queue-depth gauges `every` seconds fresh without touching the hot path."""
    while not stop.is_set():
        for stream, router in routers.items():
            metrics.queue_depth.set(router.queue_depth(), stream)
            metrics.intake_depth.set(intakes[stream].depth, stream)
        for (stream, table), writer in list(dataset.writers.items()):
            metrics.writer_buffered.set(writer.buffered_rows, stream, table)
        with anyio.move_on_after(every):
            await stop.wait()


def _timed(sink: FrameSink, metrics: Metrics, stream: StreamName) -> FrameSink:
    """`sink`, counting how long each hand-over waits: backpressure felt by the source."""

    async def put(frame: Frame) -> None:
        started = time.perf_counter()
        await sink(frame)
        waited = time.perf_counter() - started
        if waited > _BLOCKED_NOTICE:
            metrics.source_blocked.inc(stream, amount=waited)

    return put


_BLOCKED_NOTICE: Final = 0.001
"""Hand-overs faster than this are not waits, just work (not counted as blocked)."""


async def _report_progress(
    routers: Mapping[StreamName, StreamRouter],
    metrics: Metrics,
    state: DaemonState,
    notifier: Notifier,
    stop: anyio.Event,
    every: float,
) -> None:
    """One structured line per stream every `every` seconds while running; STATUS= for systemd."""
    last = {stream: (0.0, 0) for stream in routers}
    while not stop.is_set():
        with anyio.move_on_after(every):
            await stop.wait()
        if stop.is_set():
            return
        now = time.time_ns()
        for stream, router in routers.items():
            total = sum(v for k, v in metrics.messages.values.items() if k[0] == stream)
            rows = int(sum(v for k, v in metrics.rows.values.items() if k[0] == stream))
            newest = max((s.last_event_ns for s in router.symbols.values()), default=0)
            seen, written = last[stream]
            log.info(
                "stream_progress",
                stream=stream,
                msgs_per_s=round((total - seen) / every, 1),
                rows_per_s=round((rows - written) / every, 1),
                messages=int(total),
                rows_written=rows,
                symbols=len(router.symbols),
                queue_depth=router.queue_depth(),
                errors=int(metrics.symbol_failures.get(stream)),
                lag_s=round((now - newest) / 1e9, 3) if newest else None,
            )
            last[stream] = (total, rows)
        notifier.status(state.summary())


def _result(
    settings: Settings,
    writer_id: str,
    dataset: Dataset,
    metrics: Metrics,
    quarantine: Quarantine,
    seconds: float,
) -> RunResult:
    result = RunResult(str(settings.ingest.data_dir), writer_id, seconds=seconds)
    for key, writer in sorted(dataset.writers.items()):
        result.rows[key] = writer.stats.rows
        result.files[key] = writer.stats.files
    for (stream, _), count in metrics.messages.values.items():
        name: StreamName = stream  # type: ignore[assignment]
        result.messages[name] = result.messages.get(name, 0) + int(count)
    result.quarantined = quarantine.count
    result.symbol_failures = int(sum(metrics.symbol_failures.values.values()))
    return result
