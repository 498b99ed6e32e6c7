"""A source that delivers a burst of stock trade frames as fast as the daemon takes them.

A boundary fake (like the `sim` source): real frames through the real decoder, no pacing, so a
slow stage downstream is felt at once. It records how long each hand-over waited.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import msgspec

from streams.base import Frame
from streams.messages import FrameDecoder

if TYPE_CHECKING:
    from collections.abc import Mapping

    from anyio.abc import TaskStatus

    from ingest.config import StreamName
    from streams.base import FrameSink

__all__ = ["BurstSource", "burst_symbols"]

_BASE_NS = 1_719_844_200 * 1_000_000_000  # 2024-07-01T14:30:00Z


def burst_symbols(count: int) -> tuple[str, ...]:
    return tuple(f"S{n:03d}" for n in range(count))


def _stamp(ns: int) -> str:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


class BurstSource:
    """`frames` frames, each with `per_symbol` trades of every symbol, 1 ms apart in event time."""

    name = "replay"

    def __init__(self, frames: int, symbols: int, per_symbol: int) -> None:
        self.frames = frames
        self.symbols = burst_symbols(symbols)
        self.per_symbol = per_symbol
        self.sent = 0
        self.waits: list[float] = []
        self.delivered = 0

    def frame(self, n: int) -> bytes:
        messages = []
        for k in range(self.per_symbol):
            ns = _BASE_NS + (n * self.per_symbol + k) * 1_000_000
            for index, symbol in enumerate(self.symbols):
                messages.append(
                    {
                        "T": "t",
                        "S": symbol,
                        "i": n * self.per_symbol + k,
                        "x": "V",
                        "p": 100.0 + index + (n % 50) / 100,
                        "s": 100,
                        "t": _stamp(ns),
                        "c": ["@"],
                        "z": "C",
                    }
                )
        return msgspec.json.encode(messages)

    async def run(
        self, sinks: Mapping[StreamName, FrameSink], *, task_status: TaskStatus[None]
    ) -> None:
        decoder = FrameDecoder("stocks")
        sink = sinks["stocks"]
        task_status.started()
        for n in range(self.frames):
            raw = self.frame(n)
            recv_ns = time.time_ns()
            decoded = decoder.decode(raw, recv_ns)
            started = time.perf_counter()
            await sink(Frame("stocks", recv_ns, decoded.messages, decoded.rejects, raw, "json"))
            self.waits.append(time.perf_counter() - started)
            self.sent += len(decoded.messages)
            self.delivered += 1
            await anyio.lowlevel.checkpoint()  # a socket reader awaits the network here
