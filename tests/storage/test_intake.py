"""The intake: unique receive times, journal beside delivery, seals after it, segments deleted."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

from ingest.config import StorageSettings
from ingest.intake import StreamIntake
from ingest.metrics import Metrics
from storage.journal import SegmentWriter, list_segments, read_segment
from storage.parquet import open_dataset
from streams.base import Frame
from streams.messages import StockTrade

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from streams.base import FrameSink

pytestmark = pytest.mark.anyio


class GatedJournal(SegmentWriter):
    """A journal whose appends wait (in their worker thread) until the test opens the gate."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def append(self, frames: Sequence[Frame]) -> None:
        self.gate.wait(10)
        super().append(frames)


def make_intake(
    deliver: FrameSink,
    journal: SegmentWriter,
    *,
    unsealed: Callable[[], int | None] = lambda: None,
    settings: StorageSettings | None = None,
    metrics: Metrics | None = None,
    scale: float = 1.0,
) -> StreamIntake:
    """A stocks intake with no de-duplication, its router's flush `scale` times the floor."""
    return StreamIntake(
        "stocks",
        deliver,
        journal=journal,
        dedup=None,
        settings=settings or StorageSettings(),
        metrics=metrics or Metrics(),
        unsealed=unsealed,
        scale=lambda: scale,
    )


def stuck_intake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, scale: float = 1.0
) -> tuple[StreamIntake, SegmentWriter, Metrics]:
    """An intake of `queue_size = 2` whose journal is stuck (nothing runs it), a grace of 50 ms.

    Under `block` a frame waits for room; the shielded wait ends after the grace period.
    """
    monkeypatch.setattr("ingest.intake.SEAL_GRACE_SECONDS", 0.05)
    journal = SegmentWriter(tmp_path / "_journal" / "stocks", "s0of1-t", fsync="never")
    metrics = Metrics()
    intake = make_intake(
        lambda _: anyio.lowlevel.checkpoint(),
        journal,
        settings=StorageSettings(queue_size=2),
        metrics=metrics,
        scale=scale,
    )
    return intake, journal, metrics


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.glob("stocks/trades/*/*.parquet"))


def frame(recv_ns: int, i: int = 1) -> Frame:
    trade = StockTrade(S="AAPL", t="2024-07-01T14:30:00Z", i=i, x="V", p=1.0, s=1.0)
    trade.recv_ns = recv_ns
    return Frame("stocks", recv_ns, [trade], raw=f'[{{"i":{i}}}]'.encode())


class TestIntake:
    async def test_frames_are_delivered_at_once_and_journaled_in_order_with_unique_times(
        self, tmp_path: Path
    ) -> None:
        """Delivery does not wait for the journal; it holds every frame, equal times nudged."""
        journal = GatedJournal(tmp_path / "_journal" / "stocks", "s0of1-t", fsync="never")
        delivered: list[int] = []

        async def deliver(frame: Frame) -> None:
            delivered.append(frame.recv_ns)
            assert all(m.recv_ns == frame.recv_ns for m in frame.messages)

        intake = make_intake(deliver, journal)
        async with anyio.create_task_group() as group:
            await group.start(intake.run)
            for recv in (100, 100, 50, 200):
                await intake.put(frame(recv))
            await anyio.wait_all_tasks_blocked()
            assert delivered == [100, 101, 102, 200]  # the journal is still held at the gate
            assert intake.oldest_ns() == 100
            journal.gate.set()
            intake.close()
        (path,) = await anyio.to_thread.run_sync(list_segments, tmp_path, "stocks")
        read = await anyio.to_thread.run_sync(read_segment, path)
        assert [f.recv_ns for f in read.frames] == [100, 101, 102, 200]
        assert await intake.checkpoint() == 1  # nothing unsealed downstream: all covered
        assert await anyio.to_thread.run_sync(list_segments, tmp_path, "stocks") == []
        await anyio.to_thread.run_sync(journal.close)

    async def test_a_seal_waits_until_the_journal_holds_its_rows(self, tmp_path: Path) -> None:
        """Nothing reaches Parquet that is not in the journal: the seal waits for the append."""
        journal = GatedJournal(tmp_path / "_journal" / "stocks", "s0of1-t", fsync="never")
        async with open_dataset(
            tmp_path, StorageSettings(), writer_id="w", metadata={}, indicator_columns=()
        ) as dataset:
            writer = dataset.writer("stocks", "trades")

            async def deliver(frame: Frame) -> None:
                await writer.put(frame.messages)

            intake = make_intake(
                deliver, journal, unsealed=lambda: dataset.oldest_unsealed_ns("stocks")
            )
            dataset.before_seal = lambda _: intake.journaled()
            async with anyio.create_task_group() as group:
                await group.start(intake.run)
                await intake.put(frame(100))
                sealed = anyio.Event()

                async def seal() -> None:
                    await writer.seal()
                    sealed.set()

                group.start_soon(seal)
                await anyio.wait_all_tasks_blocked()
                assert await anyio.to_thread.run_sync(parquet_files, tmp_path) == []
                assert writer.oldest_unsealed_ns == 100  # still in sight of segment deletion
                journal.gate.set()
                with anyio.fail_after(10):
                    await sealed.wait()
                assert writer.oldest_unsealed_ns is None
                intake.close()
            assert len(await anyio.to_thread.run_sync(parquet_files, tmp_path)) == 1
        await anyio.to_thread.run_sync(journal.close)

    async def test_segments_wait_for_what_is_unsealed_downstream(self, tmp_path: Path) -> None:
        """A segment holding a frame a writer has not sealed yet is kept."""
        journal = SegmentWriter(
            tmp_path / "_journal" / "stocks", "s0of1-t", fsync="never", segment_bytes=1
        )
        unsealed: list[int | None] = [150]

        async def deliver(_: Frame) -> None:
            return None

        intake = make_intake(deliver, journal, unsealed=lambda: unsealed[0])
        async with anyio.create_task_group() as group:
            await group.start(intake.run)
            for recv in (100, 200):
                await intake.put(frame(recv))
                await anyio.wait_all_tasks_blocked()
            intake.close()
        assert await intake.checkpoint() == 1
        (left,) = await anyio.to_thread.run_sync(list_segments, tmp_path, "stocks")
        assert [f.recv_ns for f in (await anyio.to_thread.run_sync(read_segment, left)).frames] == [
            200
        ]
        unsealed[0] = None
        assert await intake.checkpoint() == 1
        await anyio.to_thread.run_sync(journal.close)

    async def test_a_frame_that_waits_past_the_grace_is_counted_as_dropped(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A frame past the grace with the journal still behind: counted, not lost silently."""
        intake, journal, metrics = stuck_intake(tmp_path, monkeypatch)
        for recv in (1, 2, 3):
            await intake.put(frame(recv, recv))
        assert metrics.dropped.get("stocks") == 1
        await anyio.to_thread.run_sync(journal.close)

    @pytest.mark.parametrize(("scale", "taken"), [(1.0, 2), (2.5, 5)])
    async def test_the_bound_grows_with_the_routers_flush(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scale: float, taken: int
    ) -> None:
        """The queue grows with the router's flush, by the same factor.

        With thousands of symbols the router's flush outgrows `queue_size` frames; a queue that
        did not follow would give each symbol task a few trades a flush.
        """
        intake, journal, metrics = stuck_intake(tmp_path, monkeypatch, scale=scale)
        for recv in range(1, 8):  # the frames past the bound are dropped
            await intake.put(frame(recv, recv))
        assert intake.depth == taken
        assert metrics.dropped.get("stocks") == 7 - taken
        await anyio.to_thread.run_sync(journal.close)
