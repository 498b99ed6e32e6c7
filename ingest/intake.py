"""One stream's way in: de-duplicate, journal and deliver to the router, side by side.

The source's sink for a stream is `StreamIntake.put`. A frame gets a receive time unique and
increasing within the stream (its id in the journal), loses the messages the dataset already holds
(`storage.dedup`), joins the journal's bounded queue and goes on to the router in the same step.
A flusher task appends everything queued as one batch to the stream's journal segment (in a worker
thread, fsynced per `[storage] fsync`): under load one append covers many frames (group commit).

The pipeline does not wait for the journal's write and fsync, which used to set the latency of
every frame. What the journal guarantees is kept where it matters, at the Parquet seal: a writer
seals only once the journal holds every frame taken before the seal began (`journaled`), so
nothing reaches Parquet that is not in the journal, and recovery can rebuild it. A frame joins the
queue and the router's pending set with no await in between, so it is always in sight of segment
deletion.

After every seal of one of the stream's tables, the checkpointer works out the oldest frame still
unsealed anywhere (queued for the journal, in the router, in a writer's buffer) and deletes the
journal segments older than that. A failed append is counted (`storage_errors{table="_journal"}`),
logged and retried with back-off; meanwhile the queue fills and then the source waits, and seals
wait too. The segment keeps every batch before it.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Final

import anyio
import msgspec
import structlog

from ingest.errors import StorageError
from storage.journal import JOURNAL_DIR, SegmentWriter
from storage.parquet import SEAL_GRACE_SECONDS

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from anyio.abc import TaskStatus

    from ingest.config import Settings, StorageSettings, StreamName
    from ingest.metrics import Metrics
    from storage.dedup import DedupFilter
    from streams.base import Frame, FrameSink

__all__ = ["StreamIntake", "close_journals", "create_segment_writer"]

log = structlog.get_logger("intake")

JOURNAL_TABLE: Final = "_journal"
PENDING_BYTES: Final = 8 << 20
"""Frames waiting for the journal are bounded by bytes too (and by `queue_size` in number).

Both bounds are multiplied by the router's `flush_scale()` (1 up to 4,096 symbols): the router can
only flush what reached it in one turn of the event loop, so a queue of 1,024 frames (~51k
trades) gave each of 20,000 symbol tasks 2.7 trades a call, and every call paid its task's
wake-up for them (17k trades/s end to end; 46k with the queue scaled)."""
RETRY_FIRST_SECONDS: Final = 0.05
RETRY_MAX_SECONDS: Final = 5.0


class StreamIntake:
    """De-duplicates, journals and delivers one stream's frames; deletes covered segments."""

    def __init__(
        self,
        stream: StreamName,
        deliver: FrameSink,
        *,
        journal: SegmentWriter | None,
        dedup: DedupFilter | None,
        settings: StorageSettings,
        metrics: Metrics,
        unsealed: Callable[[], int | None],
        scale: Callable[[], float] = lambda: 1.0,
    ) -> None:
        """Wire the intake to its router and dataset.

        `unsealed()` is the receive time of the oldest frame downstream not yet sealed; `scale()`
        the router's `flush_scale()`.
        """
        self.stream = stream
        self._deliver = deliver
        self._journal = journal
        self._dedup = dedup
        self._settings = settings
        self._metrics = metrics
        self._unsealed = unsealed
        self._scale = scale
        self._limit = settings.queue_size
        self._pending: list[Frame] = []
        self._pending_bytes = 0
        self._appending: list[Frame] = []
        self._last_ns = 0
        self._queued_ns = 0
        """Receive time of the newest frame queued for the journal."""
        self._journaled_ns = 0
        """Receive time of the newest frame the journal holds (or gave up on while stopping)."""
        self._journal_moved = anyio.Event()
        self._finished = False
        self._ready = anyio.Event()
        self._space = anyio.Event()
        self._sealed = anyio.Event()
        self._closing = False
        self._encoder = msgspec.json.Encoder()

    # --- the source's side ---------------------------------------------------------------------

    async def put(self, frame: Frame) -> None:
        """Accept one frame; waits while the journal or the router is behind (or drops)."""
        if frame.recv_ns <= self._last_ns:
            _restamp(frame, self._last_ns + 1)  # equal or backwards clock: keep ids unique
        self._last_ns = frame.recv_ns
        if self._dedup is not None and not frame.backfilled and self._dedup.active(self.stream):
            filtered = self._dedup.filter_frame(frame)  # counts what it drops
            if filtered is None:
                return
            frame = filtered
        if self._journal is None:
            await self._deliver(frame)
            return
        if not frame.raw:
            frame.raw, frame.encoding = self._encoder.encode(frame.messages), "json"
        if self._full():
            # A received frame is taken in whole even when the source is being cancelled. (The
            # scope only where it waits: entering one costs ~10 µs a frame.)
            with anyio.move_on_after(SEAL_GRACE_SECONDS, shield=True):
                while self._full():
                    if self._settings.backpressure == "drop":
                        self._metrics.dropped.inc(self.stream, amount=len(frame.messages))
                        return
                    await self._space.wait()
            if self._full():  # the grace ran out with the journal still behind: counted, not taken
                self._metrics.dropped.inc(self.stream, amount=len(frame.messages))
                return
        self._pending.append(frame)
        self._pending_bytes += len(frame.raw)
        self._queued_ns = frame.recv_ns
        self._ready.set()
        await self._deliver(frame)  # takes the frame before its first await (`StreamRouter`)

    def _full(self) -> bool:
        frames, size = len(self._pending), self._pending_bytes
        if frames < self._limit and size < PENDING_BYTES:
            return False  # the common case, with no call
        scale = self._scale()
        return frames >= self._limit * scale or size >= PENDING_BYTES * scale

    def close(self) -> None:
        """No more frames: `run` journals what waits, then returns."""
        self._closing = True
        self._ready.set()

    def notify_sealed(self) -> None:
        """A writer of this stream sealed rows: journal segments may now be covered."""
        self._sealed.set()

    @property
    def depth(self) -> int:
        """Frames accepted and waiting for the journal (bounded by `queue_size` x `flush_scale`)."""
        return len(self._pending)

    def oldest_ns(self) -> int | None:
        """Receive time of the oldest frame accepted here but not yet in the journal."""
        if self._appending:
            return self._appending[0].recv_ns
        return self._pending[0].recv_ns if self._pending else None

    async def journaled(self) -> None:
        """Wait until the journal holds every frame queued so far: a seal must not get ahead."""
        if self._journal is None:
            return
        target = self._queued_ns
        while self._journaled_ns < target and not self._finished:
            await self._journal_moved.wait()

    def _mark_journaled(self, recv_ns: int) -> None:
        self._journaled_ns = recv_ns
        self._journal_moved.set()
        self._journal_moved = anyio.Event()

    # --- tasks ---------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Journal until closed and drained; delete covered segments meanwhile."""
        try:
            async with anyio.create_task_group() as group:
                if self._journal is not None:
                    group.start_soon(self._checkpoints)
                task_status.started()
                if self._journal is not None:
                    await self._flush()
                else:
                    while not self._closing:
                        await self._ready.wait()
                        self._ready = anyio.Event()
                group.cancel_scope.cancel()
        finally:
            self._finished = True  # no more appends: nothing waiting on the journal may hang
            self._journal_moved.set()

    async def _flush(self) -> None:
        journal = self._journal
        assert journal is not None
        interval = self._settings.fsync_interval_ms / 1000
        while True:
            if not self._pending:
                if self._closing:
                    return
                with anyio.move_on_after(interval if journal.needs_sync else math.inf):
                    await self._ready.wait()
                self._ready = anyio.Event()
                if not self._pending:
                    if journal.needs_sync:
                        await self._sync()
                    continue
            self._appending, self._pending = self._pending, []
            self._pending_bytes = 0
            self._space.set()
            self._space = anyio.Event()
            await self._append(self._appending)
            self._mark_journaled(self._appending[-1].recv_ns)
            self._appending = []

    async def _append(self, frames: list[Frame]) -> None:
        """Append one batch, retrying with back-off; on the way out, give up after the grace."""
        journal = self._journal
        assert journal is not None
        delay, deadline = RETRY_FIRST_SECONDS, math.inf
        while True:
            try:
                await anyio.to_thread.run_sync(journal.append, frames)
            except StorageError as exc:
                self._metrics.storage_errors.inc(self.stream, JOURNAL_TABLE)
                log.error(
                    "journal_append_failed",
                    stream=self.stream,
                    frames=len(frames),
                    error=str(exc),
                    retry_in=delay,
                )
                if self._closing:
                    deadline = min(deadline, time.monotonic() + SEAL_GRACE_SECONDS)
                    if time.monotonic() >= deadline:
                        log.error("journal_skipped", stream=self.stream, frames=len(frames))
                        return  # stopping: the frames are delivered, Parquet may still take them
                await anyio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
            else:
                if delay > RETRY_FIRST_SECONDS:
                    log.info("journal_append_recovered", stream=self.stream)
                self._metrics.journal_segments.set(journal.segments, self.stream)
                return

    async def _sync(self) -> None:
        assert self._journal is not None
        try:
            await anyio.to_thread.run_sync(self._journal.sync)
        except StorageError as exc:
            self._metrics.storage_errors.inc(self.stream, JOURNAL_TABLE)
            log.error("journal_sync_failed", stream=self.stream, error=str(exc))

    async def _checkpoints(self) -> None:
        while True:
            await self._sealed.wait()
            self._sealed = anyio.Event()
            await self.checkpoint()

    async def checkpoint(self) -> int:
        """Delete the segments whose frames are all sealed into Parquet; how many went."""
        if self._journal is None:
            return 0
        bounds = [self.oldest_ns(), self._unsealed(), self._last_ns + 1]
        covered = min(ns for ns in bounds if ns is not None)
        try:
            deleted = await anyio.to_thread.run_sync(self._journal.release, covered)
        except OSError as exc:
            self._metrics.storage_errors.inc(self.stream, JOURNAL_TABLE)
            log.error("journal_release_failed", stream=self.stream, error=str(exc))
            return 0
        self._metrics.journal_segments.set(self._journal.segments, self.stream)
        if deleted:
            log.debug("journal_segments_deleted", stream=self.stream, segments=deleted)
        return deleted


def create_segment_writer(settings: Settings, writer_id: str, stream: StreamName) -> SegmentWriter:
    """The journal of one stream of this process, as `[storage]` configures it."""
    storage = settings.storage
    return SegmentWriter(
        settings.ingest.data_dir / JOURNAL_DIR / stream,
        writer_id,
        fsync=storage.fsync,
        fsync_interval_ms=storage.fsync_interval_ms,
        segment_bytes=storage.journal_segment_mb << 20,
        max_age_seconds=storage.roll_seconds,
    )


async def close_journals(
    intakes: Mapping[StreamName, StreamIntake], journals: Mapping[StreamName, SegmentWriter]
) -> None:
    """Delete the segments Parquet now covers; keep (and unlock) the rest for the next start."""
    for intake in intakes.values():
        await intake.checkpoint()
    for journal in journals.values():
        await anyio.to_thread.run_sync(journal.close)


def _restamp(frame: Frame, recv_ns: int) -> None:
    frame.recv_ns = recv_ns
    for message in frame.messages:
        message.recv_ns = recv_ns
