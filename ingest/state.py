"""What the daemon knows about itself: health, per-stream and per-symbol status, rates.

The HTTP server (`/healthz`, `/status`), the watchdog and the periodic progress line all read this
one object, so they can never disagree. Everything here is cheap and synchronous.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ingest.config import Settings, StreamName
    from ingest.metrics import Metrics
    from ingest.router import StreamRouter

__all__ = ["DaemonState"]

_NS = 1_000_000_000
WEDGED_SECONDS = 600.0
"""A stream stale this long is past any reconnect budget: stop feeding the systemd watchdog."""


@dataclass(slots=True)
class _Rate:
    """Messages per second over the interval between two reads (at least one second apart)."""

    count: int = 0
    at: float = field(default_factory=time.monotonic)
    value: float = 0.0

    def update(self, count: int) -> float:
        now = time.monotonic()
        if now - self.at >= 1.0:
            self.value = (count - self.count) / (now - self.at)
            self.count, self.at = count, now
        return self.value


class DaemonState:
    """Health and status of a running daemon (implements `ingest.server.StatusProvider`)."""

    def __init__(self, settings: Settings, metrics: Metrics, source_name: str) -> None:
        self._settings = settings
        self._metrics = metrics
        self._source = source_name
        self._started = time.monotonic()
        self._started_wall = time.time()
        self._routers: Mapping[StreamName, StreamRouter] = {}
        self._rates: dict[tuple[str, str], _Rate] = {}
        self.ready = False
        self.stopping = False
        self.port: int | None = None
        """The HTTP port actually bound (`[server] listen` may say port 0), or None."""

    def attach(self, routers: Mapping[StreamName, StreamRouter]) -> None:
        """Start reporting on these streams."""
        self._routers = routers

    # --- health --------------------------------------------------------------------------------

    def _connected(self, stream: StreamName) -> bool:
        if self._source == "alpaca":
            return self._metrics.connected.get(stream) == 1
        return self.ready and not self.stopping

    def _staleness_limit(self, stream: StreamName) -> float:
        alpaca = self._settings.alpaca
        return alpaca.news_staleness_seconds if stream == "news" else alpaca.staleness_seconds

    def _silent_for(self, stream: StreamName) -> float:
        router = self._routers.get(stream)
        last = max((s.last_recv_ns for s in router.symbols.values()), default=0) if router else 0
        since = last / _NS if last else self._started_wall
        return time.time() - since

    def health(self) -> tuple[bool, str]:
        """(True, "ok") when every stream is connected and has spoken recently enough."""
        problems = []
        for stream in self._routers:
            if not self._connected(stream):
                problems.append(f"{stream}: not connected")
            elif (silent := self._silent_for(stream)) > self._staleness_limit(stream):
                problems.append(f"{stream}: no message for {silent:.0f}s")
        if not self._routers:
            problems.append("streams not started")
        return (not problems, "; ".join(problems) or "ok")

    def alive(self) -> bool:
        """False only when a restart is the cure: a stream silent past any reconnect budget."""
        return all(self._silent_for(stream) < WEDGED_SECONDS for stream in self._routers)

    # --- status --------------------------------------------------------------------------------

    def _rate(self, key: tuple[str, str], count: int) -> float:
        rate = self._rates.get(key)
        if rate is None:
            rate = self._rates[key] = _Rate(count)
        return round(rate.update(count), 2)

    def status(self) -> dict[str, Any]:
        """Per stream and per symbol: connected, last tick, rates, lag (see StatusProvider)."""
        ok, reason = self.health()
        now = time.time_ns()
        streams: dict[str, Any] = {}
        for stream, router in self._routers.items():
            symbols: dict[str, Any] = {}
            total = 0
            last_event = 0
            for symbol, state in router.symbols.items():
                total += state.messages
                last_event = max(last_event, state.last_event_ns)
                symbols[symbol] = {
                    "messages": state.messages,
                    "msgs_per_s": self._rate((stream, symbol), state.messages),
                    "last_tick": state.last_event_ns or None,
                    "lag_s": round((now - state.last_event_ns) / _NS, 3)
                    if state.last_event_ns
                    else None,
                    "failures": state.failures,
                }
            streams[stream] = {
                "connected": self._connected(stream),
                "messages": total,
                "msgs_per_s": self._rate((stream, ""), total),
                "last_tick": last_event or None,
                "lag_s": round((now - last_event) / _NS, 3) if last_event else None,
                "queue_depth": router.queue_depth(),
                "reconnects": int(self._metrics.reconnects.get(stream)),
                "symbols": symbols,
            }
        index, count = self._settings.ingest.shard
        return {
            "ok": ok,
            "reason": reason,
            "source": self._source,
            "shard": f"{index}/{count}",
            "uptime_s": round(time.monotonic() - self._started, 1),
            "streams": streams,
        }

    def summary(self) -> str:
        """One line for systemd's STATUS=: messages per second per stream."""
        parts = []
        for stream, router in self._routers.items():
            total = sum(s.messages for s in router.symbols.values())
            parts.append(f"{stream} {self._rate((stream, '#summary'), total):.0f} msg/s")
        return ", ".join(parts) or "starting"
