"""Replay recorded frames: at original pace, N times faster, or as fast as possible.

The recording format (SPEC section 5) is JSON Lines, one Alpaca wire frame a line: either the bare
frame array, routed to the default stream, or `{"stream": ..., "recv_ts": ..., "frame": [...]}`.
A path may be a file or a folder of `*.jsonl` files, replayed in name order. A replay ends by
itself when the input is exhausted.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import IO, TYPE_CHECKING, Final

import anyio
import anyio.lowlevel
import msgspec

from ingest.config import STREAMS, StreamName
from ingest.errors import ConfigError
from streams.base import Frame, FrameSink
from streams.messages import FrameDecoder

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from anyio.abc import TaskStatus

__all__ = ["ReplaySource", "replay_files"]

_CHUNK_BYTES: Final = 4 << 20


class _Envelope(msgspec.Struct):
    """A recorded frame with its stream and receive time."""

    stream: str
    frame: msgspec.Raw
    recv_ts: str | None = None


def replay_files(path: Path) -> list[Path]:
    """The files a replay path stands for, in order; a clear error if there are none."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".jsonl" and p.is_file())
        if not files:
            msg = f"replay folder {str(path)!r} holds no *.jsonl files"
            raise ConfigError(msg)
        return files
    if not path.is_file():
        msg = f"replay path {str(path)!r} does not exist"
        raise ConfigError(msg)
    return [path]


def _parse_rfc3339(text: str) -> int:
    """Nanoseconds since the epoch from RFC 3339 (keeps all nine fractional digits)."""
    head, _, rest = text.rstrip("Z").partition(".")
    digits = "".join(ch for ch in rest if ch.isdigit())
    base = datetime.fromisoformat(head + "+00:00")
    return int(base.timestamp()) * 1_000_000_000 + int((digits + "000000000")[:9])


class ReplaySource:
    """Frames from recording files, paced by their receive times (or their first event time)."""

    name = "replay"

    def __init__(
        self,
        path: Path,
        *,
        speed: float | None = None,
        default_stream: StreamName = "stocks",
        max_frame_bytes: int | None = None,
    ) -> None:
        self._files = replay_files(path)
        self._max_frame_bytes = max_frame_bytes
        self._speed = speed
        self._default: StreamName = default_stream
        self._envelope = msgspec.json.Decoder(_Envelope)
        self.frames = 0
        self.skipped = 0

    async def run(
        self, sinks: Mapping[StreamName, FrameSink], *, task_status: TaskStatus[None]
    ) -> None:
        """Deliver every frame of every file, then return."""
        decoders = {
            stream: FrameDecoder(stream, max_bytes=self._max_frame_bytes) for stream in sinks
        }
        task_status.started()
        first_event: int | None = None
        wall0 = time.monotonic()
        for path in self._files:
            with path.open("rb") as handle:
                while lines := await anyio.to_thread.run_sync(_read_chunk, handle):
                    for line in lines:
                        routed = self._route(line)
                        if routed is None:
                            continue
                        stream, payload, recorded_ns = routed
                        if stream not in sinks:
                            self.skipped += 1
                            continue
                        recv_ns = time.time_ns()
                        decoded = decoders[stream].decode(payload, recv_ns)
                        if self._speed is not None:
                            event_ns = recorded_ns or _first_time(decoded.messages)
                            if event_ns is not None:
                                first_event = first_event if first_event is not None else event_ns
                                due = wall0 + (event_ns - first_event) / 1e9 / self._speed
                                await anyio.sleep(max(0.0, due - time.monotonic()))
                        frame = Frame(stream, recv_ns, decoded.messages, decoded.rejects, payload)
                        await sinks[stream](frame)
                        self.frames += 1
                    await anyio.lowlevel.checkpoint()

    def _route(self, line: bytes) -> tuple[StreamName, bytes, int | None] | None:
        line = line.strip()
        if not line:
            return None
        if line[:1] != b"{":
            return self._default, line, None
        try:
            envelope = self._envelope.decode(line)
        except msgspec.DecodeError:
            return self._default, line, None  # quarantined by the decoder as a malformed frame
        if envelope.stream not in STREAMS:
            return self._default, line, None
        stream: StreamName = envelope.stream
        recorded = None
        if envelope.recv_ts:
            try:
                recorded = _parse_rfc3339(envelope.recv_ts)
            except ValueError:
                recorded = None
        return stream, bytes(envelope.frame), recorded


def _read_chunk(handle: IO[bytes]) -> list[bytes]:
    return handle.readlines(_CHUNK_BYTES)


def _first_time(messages: Sequence[object]) -> int | None:
    for message in messages:
        stamp = getattr(message, "t", None) or getattr(message, "created_at", None)
        if isinstance(stamp, int):
            return stamp
        if isinstance(stamp, str):
            try:
                return _parse_rfc3339(stamp)
            except ValueError:
                return None
    return None
