"""Test doubles for the daemon side of the operations server, and a helper that runs it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from ingest.config import ServerSettings
from ingest.live import LiveHub
from ingest.metrics import Metrics
from ingest.server import serve

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["FakeState", "RunningServer", "make_bar", "open_server"]


def _status_document() -> dict[str, Any]:
    return {
        "ok": True,
        "reason": "ok",
        "source": "sim",
        "shard": "0/1",
        "uptime_s": 12.5,
        "streams": {
            "stocks": {
                "connected": True,
                "msgs_per_s": 1234.5,
                "last_tick": "2024-03-15T14:30:00.123456Z",
                "lag_s": 0.042,
                "reconnects": 1,
                "symbols": {
                    "AAPL": {
                        "msgs_per_s": 600.25,
                        "last_tick": "2024-03-15T14:30:00.123456Z",
                        "lag_s": 0.04,
                    },
                    "MSFT": {"msgs_per_s": 634.25, "last_tick": 1710513000000000000, "lag_s": 0.05},
                },
            },
            "news": {"connected": False, "msgs_per_s": 0.0, "last_tick": None, "lag_s": None},
        },
    }


@dataclass
class FakeState:
    """A `StatusProvider` whose answers the test sets directly."""

    ok: bool = True
    reason: str = "ok"
    document: dict[str, Any] = field(default_factory=_status_document)

    def health(self) -> tuple[bool, str]:
        return self.ok, self.reason

    def status(self) -> dict[str, Any]:
        return self.document


@dataclass
class RunningServer:
    """A `serve` task on a loopback port, with what the test needs to poke it."""

    port: int
    state: FakeState
    metrics: Metrics
    hub: LiveHub

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def open_server(
    *, token: str | None = None, client_buffer: int = 1024, max_clients: int = 1000
) -> AsyncIterator[RunningServer]:
    """Run `serve` on 127.0.0.1 with a free port until the block ends."""
    metrics = Metrics()
    state = FakeState()
    hub = LiveHub(metrics, client_buffer=client_buffer, max_clients=max_clients)
    settings = ServerSettings(listen="127.0.0.1:0", token=token)
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve, settings, state, metrics, hub)
        assert isinstance(port, int)
        yield RunningServer(port, state, metrics, hub)
        tg.cancel_scope.cancel()


def make_bar(i: int, symbol: str = "AAPL", *, pad: int = 0) -> dict[str, Any]:
    """The i-th closed 1-minute bar of `symbol`, like the pipeline emits (pad bloats it)."""
    close = 100.0 + i / 100
    bar: dict[str, Any] = {
        "symbol": symbol,
        "ts": 1_710_513_000_000_000_000 + i * 60_000_000_000,
        "bar_type": "time",
        "bar_size": "1m",
        "open": close - 0.5,
        "high": close + 1.0,
        "low": close - 1.0,
        "close": close,
        "volume": 1000.0 + i,
        "sma_20": None if i < 19 else close - 0.1,
        "rsi_14": float("nan"),
        "trend": "NEUTRAL",
    }
    if pad:
        bar["pad"] = "x" * pad
    return bar
