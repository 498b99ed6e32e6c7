"""The seam between market-data sources and the daemon.

A source turns whatever it reads (a WebSocket, a recording, a simulation) into decoded `Frame`s and
hands each to the sink of its stream type. The sink is the stream's demultiplexer: it may block when
the stream's symbol tasks are behind, which is how backpressure reaches the reader.

A source that can fill gaps from history (Alpaca's REST API) asks the daemon what it already holds
through a `Ledger`, which the daemon hands it before it runs (`SupportsLedger`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from ingest.config import StreamName
    from streams.messages import AnyMessage, Encoding, Reject

__all__ = [
    "Frame",
    "FrameSink",
    "Ledger",
    "OverlapCheck",
    "Source",
    "SupportsBarHistory",
    "SupportsLedger",
]


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
    backfilled: bool = False
    """Messages from REST history after a gap, already checked against what the daemon holds
    (`streams.alpaca.backfill`), so the intake's de-duplication leaves them alone."""


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


class OverlapCheck(Protocol):
    """Which messages of a back-fill the daemon does not hold yet, for one gap of one stream."""

    def remember(self, messages: Sequence[AnyMessage]) -> None:
        """Messages that arrived live during the gap's back-fill: REST copies are dropped."""

    def admit(self, messages: Sequence[AnyMessage]) -> list[AnyMessage]:
        """The messages inside the gap that are not held yet (they are remembered from now on)."""


class Ledger(Protocol):
    """What the daemon holds of a stream: the seam a gap back-fill works against."""

    def last_seen(self, stream: StreamName, table: str, symbol: str | None) -> int | None:
        """Event time (ns) of the newest row of `table` for `symbol` (None: any) taken so far.

        Rows persisted by an earlier run count; `None` if nothing is known.
        """

    def known_symbols(self, stream: StreamName, table: str) -> list[str]:
        """Every symbol `table` has rows of (for a `*` subscription)."""

    async def settle(self, stream: StreamName, before_ns: int) -> None:
        """Wait until every frame received before `before_ns` has reached the writers."""

    async def overlap_check(
        self, stream: StreamName, starts: Mapping[tuple[str, str], int], end_ns: int
    ) -> OverlapCheck:
        """A check for one gap: per (table, symbol) it starts at `starts`, it ends at `end_ns`."""


@runtime_checkable
class SupportsLedger(Protocol):
    """A source that fills gaps from history when given the daemon's `Ledger`."""

    ledger: Ledger | None


@runtime_checkable
class SupportsBarHistory(Protocol):
    """A source that can tell recent bar closes (indicator warm-up, `ingest.warmup`)."""

    async def bar_closes(
        self,
        stream: StreamName,
        symbols: Sequence[str],
        seconds: float,
        start_ns: int,
        end_ns: int,
    ) -> dict[str, list[tuple[int, float]]]:
        """(bar start ns, close) per symbol for bars `seconds` wide in `[start, end]`.

        Empty when the source has no bars of that width.
        """
