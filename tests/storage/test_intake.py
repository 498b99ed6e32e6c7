"""The intake: unique receive times, journal before delivery, segments deleted once covered."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest

from ingest.config import StorageSettings
from ingest.intake import StreamIntake
from ingest.metrics import Metrics
from storage.journal import SegmentWriter, list_segments, read_segment
from streams.base import Frame
from streams.messages import StockTrade

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


def frame(recv_ns: int, i: int = 1) -> Frame:
    trade = StockTrade(S="AAPL", t="2024-07-01T14:30:00Z", i=i, x="V", p=1.0, s=1.0)
    trade.recv_ns = recv_ns
    return Frame("stocks", recv_ns, [trade], raw=f'[{{"i":{i}}}]'.encode())


class TestIntake:
    async def test_frames_are_journaled_before_delivery_with_unique_times(
        self, tmp_path: Path
    ) -> None:
        """Each delivered frame is already in the journal; equal or older times are nudged."""
        journal = SegmentWriter(tmp_path / "_journal" / "stocks", "s0of1-t", fsync="never")
        seen: list[tuple[int, list[int]]] = []

        async def deliver(delivered: Frame) -> None:
            (path,) = await anyio.to_thread.run_sync(list_segments, tmp_path, "stocks")
            read = await anyio.to_thread.run_sync(read_segment, path)
            seen.append((delivered.recv_ns, [f.recv_ns for f in read.frames]))
            assert all(m.recv_ns == delivered.recv_ns for m in delivered.messages)

        intake = StreamIntake(
            "stocks",
            deliver,
            journal=journal,
            dedup=None,
            settings=StorageSettings(),
            metrics=Metrics(),
            unsealed=lambda: None,
        )
        async with anyio.create_task_group() as group:
            await group.start(intake.run)
            for recv in (100, 100, 50, 200):
                await intake.put(frame(recv))
            intake.close()
        assert [recv for recv, _ in seen] == [100, 101, 102, 200]
        for recv, journaled in seen:
            assert recv in journaled
        assert await intake.checkpoint() == 1  # nothing unsealed downstream: all covered
        assert await anyio.to_thread.run_sync(list_segments, tmp_path, "stocks") == []
        await anyio.to_thread.run_sync(journal.close)

    async def test_segments_wait_for_what_is_unsealed_downstream(self, tmp_path: Path) -> None:
        """A segment holding a frame a writer has not sealed yet is kept."""
        journal = SegmentWriter(
            tmp_path / "_journal" / "stocks", "s0of1-t", fsync="never", segment_bytes=1
        )
        unsealed: list[int | None] = [150]

        async def deliver(_: Frame) -> None:
            return None

        intake = StreamIntake(
            "stocks",
            deliver,
            journal=journal,
            dedup=None,
            settings=StorageSettings(),
            metrics=Metrics(),
            unsealed=lambda: unsealed[0],
        )
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
        """A frame past the grace with the journal still behind: counted, not lost silently.

        Under `block` a frame waits for room; the shielded wait ends after the grace period.
        """
        monkeypatch.setattr("ingest.intake.SEAL_GRACE_SECONDS", 0.05)
        journal = SegmentWriter(tmp_path / "_journal" / "stocks", "s0of1-t", fsync="never")
        metrics = Metrics()
        intake = StreamIntake(
            "stocks",
            lambda _: anyio.lowlevel.checkpoint(),
            journal=journal,
            dedup=None,
            settings=StorageSettings(queue_size=2),
            metrics=metrics,
            unsealed=lambda: None,
        )
        # No `run`: nothing drains the waiting frames, as with a journal that is stuck.
        for recv in (1, 2, 3):
            await intake.put(frame(recv, recv))
        assert metrics.dropped.get("stocks") == 1
        await anyio.to_thread.run_sync(journal.close)
