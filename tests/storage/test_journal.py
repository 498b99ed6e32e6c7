"""Journal segments: append, read back up to a torn tail, rotate, delete what Parquet covers."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest

from storage.journal import SegmentWriter, list_segments, lock_segment, read_segment
from streams.base import Frame

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


def frame(recv_ns: int, payload: bytes = b'[{"T":"t"}]', *, msgpack: bool = False) -> Frame:
    return Frame("stocks", recv_ns, [], raw=payload, encoding="msgpack" if msgpack else "json")


@pytest.fixture
def journals() -> Iterator[list[SegmentWriter]]:
    """Writers to close after the test (they hold files and locks)."""
    made: list[SegmentWriter] = []
    yield made
    for journal in made:
        journal.close()


@pytest.fixture
def writer(tmp_path: Path, journals: list[SegmentWriter]) -> Callable[..., SegmentWriter]:
    def make(**kwargs: Any) -> SegmentWriter:
        journal = SegmentWriter(tmp_path / "_journal" / "stocks", "s0of1-test", **kwargs)
        journals.append(journal)
        return journal

    return make


class TestSegments:
    def test_frames_read_back_in_order_with_their_encoding(
        self, tmp_path: Path, writer: Callable[..., SegmentWriter]
    ) -> None:
        """Receive time, encoding and bytes of every appended frame come back as written."""
        journal = writer()
        journal.append([frame(1, b"a"), frame(2, b"\x93\x01", msgpack=True)])
        journal.append([frame(3, b"c")])
        (path,) = list_segments(tmp_path, "stocks")
        read = read_segment(path)
        assert [(f.recv_ns, f.encoding, f.payload) for f in read.frames] == [
            (1, "json", b"a"),
            (2, "msgpack", b"\x93\x01"),
            (3, "json", b"c"),
        ]
        assert read.torn_bytes == 0

    def test_torn_tail_is_cut_at_the_last_complete_batch(
        self, tmp_path: Path, writer: Callable[..., SegmentWriter]
    ) -> None:
        """Truncated anywhere inside the last batch, a segment yields every earlier batch."""
        journal = writer(fsync="never")
        journal.append([frame(1), frame(2)])
        (path,) = list_segments(tmp_path, "stocks")
        whole = path.stat().st_size
        journal.append([frame(3, b"x" * 500)])
        data = path.read_bytes()
        for cut in (1, 8, 100, len(data) - whole - 1):
            path.write_bytes(data[: len(data) - cut])
            read = read_segment(path)
            assert [f.recv_ns for f in read.frames] == [1, 2], cut
            assert read.torn_bytes == len(data) - cut - whole, cut

    def test_a_segment_torn_inside_its_schema_reads_as_empty(
        self, tmp_path: Path, writer: Callable[..., SegmentWriter]
    ) -> None:
        """Even a few bytes of header are a torn tail, not an error."""
        path = tmp_path / "x.arrows"
        path.write_bytes(b"\xff\xff\xff\xff\x10")
        read = read_segment(path)
        assert (read.frames, read.torn_bytes) == ([], 5)

    def test_release_deletes_only_covered_segments(
        self, tmp_path: Path, writer: Callable[..., SegmentWriter]
    ) -> None:
        """Segments whose newest frame is older than the covered time go; newer ones stay."""
        journal = writer(segment_bytes=1)  # every append rotates
        for recv in (10, 20, 30):
            journal.append([frame(recv)])
        assert len(list_segments(tmp_path, "stocks")) == 3
        assert journal.release(25) == 2
        (left,) = list_segments(tmp_path, "stocks")
        assert [f.recv_ns for f in read_segment(left).frames] == [30]
        assert journal.release(31) == 1
        assert list_segments(tmp_path, "stocks") == []

    def test_open_segment_is_rotated_and_deleted_once_covered(
        self, tmp_path: Path, writer: Callable[..., SegmentWriter]
    ) -> None:
        """A quiet stream's only segment goes as soon as Parquet covers it."""
        journal = writer()
        journal.append([frame(5)])
        assert journal.release(5) == 0
        assert journal.release(6) == 1
        assert journal.segments == 0
        journal.append([frame(7)])
        assert len(list_segments(tmp_path, "stocks")) == 1

    def test_segments_of_a_live_writer_are_locked(
        self, tmp_path: Path, writer: Callable[..., SegmentWriter]
    ) -> None:
        """Recovery cannot claim a segment while its writer owns it, rotated or not."""
        journal = writer(segment_bytes=1)
        journal.append([frame(1)])
        (path,) = list_segments(tmp_path, "stocks")
        assert lock_segment(path) is None
        journal.close()
        fd = lock_segment(path)  # given up: the next start may recover it
        assert fd is not None
        os.close(fd)
        assert path.exists()

    @pytest.mark.parametrize("policy", ["batch", "interval", "never"])
    def test_every_fsync_policy_writes_the_same_frames(
        self, tmp_path: Path, policy: str, writer: Callable[..., SegmentWriter]
    ) -> None:
        """The policy changes durability, never content; `interval` leaves a sync pending."""
        journal = writer(fsync=policy, fsync_interval_ms=60_000)
        journal.append([frame(1)])
        journal.append([frame(2)])
        assert journal.needs_sync == (policy == "interval")
        journal.sync()
        assert not journal.needs_sync
        (path,) = list_segments(tmp_path, "stocks")
        assert [f.recv_ns for f in read_segment(path).frames] == [1, 2]
