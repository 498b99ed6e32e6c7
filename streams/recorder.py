"""`--record DIR`: every received frame as JSON Lines, replayable by the `replay` source.

One line per frame: `{"stream": "stocks", "recv_ts": "<RFC 3339 ns>", "frame": [...]}`. JSON frames
are written as received. MessagePack frames (options) are written decoded, as JSON, with their
timestamps as RFC 3339 strings. A frame that is not valid JSON is written as a JSON string, so the
line stays valid and a replay quarantines it again. One file per stream per recording; lines are
buffered and appended in a worker thread, so the event loop never waits on the disk.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

import anyio
import msgspec
import structlog

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from ingest.config import StreamName
    from streams.messages import DecodedFrame, Encoding

__all__ = ["FrameRecorder", "format_recv_ts", "open_recorder"]

_log = structlog.get_logger("streams.recorder")

FLUSH_BYTES: Final = 256 * 1024
FLUSH_SECONDS: Final = 1.0
CLOSE_GRACE: Final = 10.0


def format_recv_ts(recv_ns: int) -> str:
    """RFC 3339 UTC with nanoseconds from epoch nanoseconds."""
    seconds, nanos = divmod(recv_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


class _Line(msgspec.Struct):
    stream: str
    recv_ts: str
    frame: msgspec.Raw


class _File:
    __slots__ = ("buffer", "flushed_at", "lines", "lock", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.buffer = bytearray()
        self.lock = anyio.Lock()
        self.flushed_at = time.monotonic()
        self.lines = 0


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


class FrameRecorder:
    """Appends frames to `<directory>/<stream>-<UTC start>.jsonl`; use through `open_recorder`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self._files: dict[str, _File] = {}
        self._encoder = msgspec.json.Encoder()

    @property
    def paths(self) -> list[Path]:
        """The files written so far."""
        return [f.path for f in self._files.values()]

    async def record(
        self,
        stream: StreamName,
        recv_ns: int,
        raw: bytes,
        decoded: DecodedFrame,
        encoding: Encoding = "json",
    ) -> None:
        """Buffer one frame's line; append the buffer when it is large or old enough."""
        frame = self._frame_json(raw, decoded, encoding)
        line = self._encoder.encode(_Line(stream, format_recv_ts(recv_ns), msgspec.Raw(frame)))
        file = self._file(stream)
        file.buffer += line
        file.buffer += b"\n"
        file.lines += 1
        if len(file.buffer) >= FLUSH_BYTES or time.monotonic() - file.flushed_at >= FLUSH_SECONDS:
            await self._flush(file)

    async def flush(self) -> None:
        """Append every buffered line to its file."""
        for file in list(self._files.values()):
            await self._flush(file)

    def _file(self, stream: str) -> _File:
        file = self._files.get(stream)
        if file is None:
            file = self._files[stream] = _File(self.directory / f"{stream}-{self._stamp}.jsonl")
        return file

    async def _flush(self, file: _File) -> None:
        async with file.lock:
            if not file.buffer:
                return
            data, file.buffer = bytes(file.buffer), bytearray()
            file.flushed_at = time.monotonic()
            await anyio.to_thread.run_sync(_append, file.path, data)

    def _frame_json(self, raw: bytes, decoded: DecodedFrame, encoding: Encoding) -> bytes:
        if encoding == "msgpack":
            return self._encoder.encode([_builtins(m) for m in decoded.messages])
        if any(r.reason == "malformed_frame" for r in decoded.rejects):
            return self._encoder.encode(raw.decode(errors="replace"))
        if b"\n" in raw or b"\r" in raw:
            return self._encoder.encode(msgspec.json.decode(raw))
        return raw


def _builtins(message: object) -> object:
    value = msgspec.to_builtins(message)
    if isinstance(value, dict):
        value.pop("recv_ns", None)
    return value


@asynccontextmanager
async def open_recorder(directory: Path) -> AsyncIterator[FrameRecorder]:
    """A recorder writing into `directory` (created); everything is flushed on exit."""
    await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
    recorder = FrameRecorder(directory)
    try:
        yield recorder
    finally:
        with anyio.move_on_after(CLOSE_GRACE, shield=True):
            await recorder.flush()
            _log.info("recording_closed", files=[str(p) for p in recorder.paths])
