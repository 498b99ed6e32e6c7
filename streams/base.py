"""The seam between market-data sources and the daemon.

A source turns whatever it reads (a WebSocket, a recording, a simulation) into decoded `Frame`s and
hands each to the sink of its stream type. The sink is the stream's demultiplexer: it may block when
the stream's symbol tasks are behind, which is how backpressure reaches the reader.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from ingest.config import StreamName
    from streams.messages import AnyMessage, Encoding, Reject

__all__ = ["Frame", "FrameSink", "Source"]


@dataclass(slots=True)
class Frame:
    """One received frame of one stream type, decoded, with the bytes it was decoded from."""

    stream: StreamName
    recv_ns: int
    """When the frame was received (UTC nanoseconds)."""
    messages: list[AnyMessage]
    rejects: list[Reject] = field(default_factory=list)
    raw: bytes = b""
    """The frame as received: what the journal keeps. Empty when a source has no bytes."""
    encoding: Encoding = "json"
    """How `raw` is encoded (the options stream speaks MessagePack)."""


FrameSink = Callable[[Frame], Awaitable[None]]


class Source(Protocol):
    """A producer of frames for one or more stream types."""

    name: str
    """`sim`, `alpaca` or `replay`: recorded in the dataset's file metadata."""

    async def run(
        self, sinks: Mapping[StreamName, FrameSink], *, task_status: TaskStatus[None]
    ) -> None:
        """Deliver frames to `sinks[frame.stream]` until exhausted or cancelled.

        Calls `task_status.started()` once every stream is connected and subscribed (or, for
        sources without connections, once it begins). Returning means the input is exhausted.
        """
        ...
