"""The journal: every accepted frame on disk before Parquet holds it, until Parquet covers it.

Layout: `<data_dir>/_journal/<stream>/<writer id>-<seq>.arrows`. A segment is an Arrow IPC stream
file: append-only, and readable up to its last complete batch whatever happened to the process.
One row per frame: `recv_ns` (the frame's receive time, unique and increasing within a stream, so
it doubles as the frame's id), `encoding` (0 JSON, 1 MessagePack) and `payload` (the frame's
bytes). Each flush appends one batch; `[storage] fsync` decides whether it is fsynced (`batch`),
at most every `fsync_interval_ms` (`interval`) or left to the OS (`never`).

A segment is rotated by size or age and deleted once its newest frame is older than everything
not yet sealed into Parquet (the caller tracks that and passes the receive time). The writing
process holds an exclusive `flock` on each of its segments until it deletes them, so a process
looking for segments to recover never takes one that is still owned.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Final, cast

import pyarrow as pa
import structlog

from ingest.errors import StorageError
from storage.atomic import fsync_dir

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from ingest.config import FsyncPolicy, StreamName
    from streams.base import Frame
    from streams.messages import Encoding

__all__ = [
    "JOURNAL_DIR",
    "JournalFrame",
    "SegmentRead",
    "SegmentWriter",
    "list_segments",
    "lock_segment",
    "probe_journal",
    "read_segment",
]

log = structlog.get_logger("storage.journal")

JOURNAL_DIR: Final = "_journal"
SUFFIX: Final = ".arrows"
_FIELDS: Final[list[pa.Field[Any]]] = [
    pa.field("recv_ns", pa.int64()),
    pa.field("encoding", pa.uint8()),
    pa.field("payload", pa.binary()),
]
SCHEMA: Final = pa.schema(_FIELDS)
_CODES: Final[dict[str, int]] = {"json": 0, "msgpack": 1}
_ENCODINGS: Final[tuple[Encoding, ...]] = ("json", "msgpack")


@dataclass(frozen=True, slots=True)
class JournalFrame:
    """One journaled frame as read back."""

    recv_ns: int
    encoding: Encoding
    payload: bytes


@dataclass(slots=True)
class SegmentRead:
    """A segment's complete frames and how many bytes of a torn tail were left behind."""

    path: Path
    frames: list[JournalFrame]
    torn_bytes: int


def probe_journal(root: Path) -> None:
    """Create and remove a file under `<root>/_journal`, so an unwritable disk fails at start.

    Raises:
        StorageError: nothing can be written there.
    """
    directory = root / JOURNAL_DIR
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"data directory {str(root)!r} cannot be created: {exc.strerror or exc}"
        raise StorageError(msg) from exc
    probe = directory / f".probe-{os.getpid()}"
    try:
        directory.mkdir(exist_ok=True)
        with probe.open("wb") as file:
            file.write(b"\0" * 4096)
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        msg = f"data directory {str(root)!r} is not writable: {exc.strerror or exc}"
        raise StorageError(msg) from exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


def list_segments(root: Path, stream: StreamName) -> list[Path]:
    """The segment files of one stream, oldest name first."""
    directory = root / JOURNAL_DIR / stream
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.name.endswith(SUFFIX))


def lock_segment(path: Path) -> int | None:
    """An fd holding an exclusive lock on `path`, or `None` if another process owns it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def read_segment(path: Path) -> SegmentRead:
    """Every complete batch of a segment; a torn tail (a half-written batch) is measured only."""
    data = path.read_bytes()
    source = pa.BufferReader(data)
    frames: list[JournalFrame] = []
    good = 0
    try:
        reader = pa.ipc.open_stream(source)
        good = source.tell()
        for batch in reader:
            recv = cast("list[int]", batch.column(0).to_pylist())
            codes = cast("list[int]", batch.column(1).to_pylist())
            payloads = cast("list[bytes]", batch.column(2).to_pylist())
            frames.extend(
                JournalFrame(r, _ENCODINGS[c], p)
                for r, c, p in zip(recv, codes, payloads, strict=True)
            )
            good = source.tell()
        good = source.tell()  # past the end-of-stream marker of a closed segment
    except (pa.ArrowInvalid, OSError, IndexError):
        pass  # a torn or garbled tail: everything before it is intact
    return SegmentRead(path, frames, len(data) - good)


@dataclass(slots=True)
class _Segment:
    path: Path
    file: IO[bytes]
    writer: pa.ipc.RecordBatchStreamWriter | None
    opened: float
    first_ns: int = 0
    last_ns: int = 0
    size: int = 0
    frames: int = 0


@dataclass(slots=True)
class SegmentWriter:
    """One stream's journal: appends batches of frames, rotates segments, deletes covered ones.

    Every method does file I/O: call it from a worker thread. Methods are serialised by a lock,
    so the flusher and the checkpointer may use the same writer from different threads.
    """

    directory: Path
    writer_id: str
    fsync: FsyncPolicy = "batch"
    fsync_interval_ms: int = 200
    segment_bytes: int = 64 << 20
    max_age_seconds: float = 60.0
    _current: _Segment | None = None
    _closed: list[_Segment] = field(default_factory=list)
    _seq: int = 0
    _last_sync: float = 0.0
    _unsynced: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def segments(self) -> int:
        """Segments on disk that this writer still owns."""
        return len(self._closed) + (self._current is not None)

    @property
    def needs_sync(self) -> bool:
        """Appended bytes not yet fsynced (the `interval` policy syncs them when idle)."""
        return self._unsynced

    def append(self, frames: Sequence[Frame]) -> None:
        """Write `frames` as one batch.

        Raises:
            StorageError: the batch could not be written; the segment keeps every batch before it.
        """
        if not frames:
            return
        batch = pa.record_batch(
            [
                pa.array([f.recv_ns for f in frames], pa.int64()),
                pa.array([_CODES[f.encoding] for f in frames], pa.uint8()),
                pa.array([f.raw for f in frames], pa.binary()),
            ],
            schema=SCHEMA,
        )
        with self._lock:
            segment = self._segment()
            good = segment.size
            try:
                assert segment.writer is not None
                segment.writer.write_batch(batch)
                segment.size = segment.file.tell()
                if self.fsync == "batch" or (
                    self.fsync == "interval"
                    and time.monotonic() - self._last_sync >= self.fsync_interval_ms / 1000
                ):
                    self._sync(segment)
                else:
                    self._unsynced = self.fsync == "interval"
            except (OSError, pa.ArrowException) as exc:
                self._abandon(segment, good)
                msg = f"cannot append to journal segment {str(segment.path)!r}: {_reason(exc)}"
                raise StorageError(msg) from exc
            if not segment.frames:
                segment.first_ns = frames[0].recv_ns
            segment.last_ns = frames[-1].recv_ns
            segment.frames += len(frames)
            if segment.size >= self.segment_bytes:
                self._rotate()

    def sync(self) -> None:
        """Fsync the open segment now."""
        with self._lock:
            if self._current is not None and self._unsynced:
                try:
                    self._sync(self._current)
                except OSError as exc:
                    msg = f"cannot fsync journal segment {str(self._current.path)!r}: {exc}"
                    raise StorageError(msg) from exc

    def release(self, covered_ns: int | None) -> int:
        """Delete every segment whose frames all came before `covered_ns` (`None`: all of them).

        The open segment is rotated first when it is entirely covered. Returns the number of
        segments deleted.
        """
        with self._lock:
            current = self._current
            if current is not None and (
                covered_ns is None or (current.frames and current.last_ns < covered_ns)
            ):
                self._rotate()
            done = [
                s
                for s in self._closed
                if covered_ns is None or not s.frames or s.last_ns < covered_ns
            ]
            for segment in done:
                self._closed.remove(segment)
                segment.path.unlink(missing_ok=True)
                segment.file.close()  # releases the lock only once the file is gone
            if done and self.fsync != "never":
                fsync_dir(self.directory)
            return len(done)

    def close(self) -> None:
        """Close every segment and give up its lock; what is left is for the next start."""
        with self._lock:
            if self._current is not None:
                self._rotate()
            for segment in self._closed:
                segment.file.close()
            self._closed.clear()

    # --- internals ---------------------------------------------------------------------------

    def _segment(self) -> _Segment:
        current = self._current
        if current is not None and time.monotonic() - current.opened >= self.max_age_seconds:
            self._rotate()
            current = None
        if current is None:
            current = self._current = self._open()
        return current

    def _open(self) -> _Segment:
        self._seq += 1
        path = self.directory / f"{self.writer_id}-{self._seq:06d}{SUFFIX}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            msg = f"cannot create journal segment {str(path)!r}: {_reason(exc)}"
            raise StorageError(msg) from exc
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        file = os.fdopen(fd, "wb", buffering=0)
        try:
            writer = pa.ipc.new_stream(file, SCHEMA)
            if self.fsync != "never":
                fsync_dir(self.directory)
        except (OSError, pa.ArrowException) as exc:
            file.close()
            path.unlink(missing_ok=True)
            msg = f"cannot create journal segment {str(path)!r}: {_reason(exc)}"
            raise StorageError(msg) from exc
        log.debug("journal_segment_opened", segment=path.name)
        return _Segment(path, file, writer, time.monotonic())

    def _rotate(self) -> None:
        """Close the open segment (end-of-stream marker, fsync) and keep it until covered."""
        segment = self._current
        if segment is None:
            return
        self._current = None
        if segment.writer is not None:
            try:
                segment.writer.close()
                if self.fsync != "never":
                    os.fsync(segment.file.fileno())
            except (OSError, pa.ArrowException) as exc:
                # The frames are in it already; a missing end marker reads as a clean end.
                log.warning(
                    "journal_segment_close_failed", segment=segment.path.name, error=str(exc)
                )
            segment.writer = None
            self._unsynced = False
        self._closed.append(segment)

    def _sync(self, segment: _Segment) -> None:
        os.fsync(segment.file.fileno())
        self._last_sync = time.monotonic()
        self._unsynced = False

    def _abandon(self, segment: _Segment, good: int) -> None:
        """Cut a failed batch off a segment and stop writing to it; the next batch opens anew."""
        try:
            os.ftruncate(segment.file.fileno(), good)
        except OSError:
            pass  # recovery cuts the torn tail instead
        segment.writer = None  # never touch a stream writer after a failed write
        segment.size = good
        self._current = None
        if segment.frames:
            self._closed.append(segment)
        else:
            segment.path.unlink(missing_ok=True)
            segment.file.close()


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
