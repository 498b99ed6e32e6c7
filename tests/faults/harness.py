"""The daemon on the Alpaca source against the fake server, for one scripted fault scenario.

`run_scenario` starts the fake (WebSockets and REST history on one loopback port), lets a test
script its sessions, runs the whole daemon until every table holds as many rows as the content
it expects (or a deadline passes), lets the back-fill settle, and stops it the way a signal
would. Everything is real: sockets, alpaca-py's REST clients, the journal, Parquet files.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from structlog.testing import capture_logs

from ingest.app import run_daemon
from ingest.config import Settings, StreamName, StreamSettings, settings_from_mapping
from ingest.metrics import Metrics
from streams.alpaca import AlpacaSource
from streams.alpaca.credentials import Credentials
from tests.alpaca.conftest import settings_for
from tests.alpaca.fake_alpaca import FakeAlpaca

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Mapping
    from pathlib import Path

__all__ = ["PATHS", "Outcome", "daemon_settings", "run_scenario"]

PATHS: dict[StreamName, str] = {
    "stocks": "/v2/iex",
    "crypto": "/v1beta3/crypto/us",
    "options": "/v1beta1/indicative",
    "news": "/v1beta1/news",
}
CHANNELS: dict[StreamName, tuple[str, ...]] = {
    "stocks": ("trades", "quotes", "bars"),
    "crypto": ("trades", "quotes"),
    "options": ("trades", "quotes"),
    "news": ("news",),
}
SYMBOLS: dict[StreamName, tuple[str, ...]] = {
    "stocks": ("AAPL", "MSFT"),
    "crypto": ("BTC/USD", "ETH/USD"),
    "options": ("AAPL240315C00172500",),
    "news": ("*",),
}


@dataclass
class Outcome:
    """What a scenario run left behind, besides the dataset."""

    metrics: Metrics
    logs: list[dict[str, Any]] = field(default_factory=list)
    fake: FakeAlpaca | None = None
    seconds: float = 0.0

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.logs if e.get("event") == name]


def daemon_settings(root: Path, streams: tuple[StreamName, ...], **storage: Any) -> Settings:
    """Small, quiet daemon settings writing into `root` for `streams`."""
    base = settings_from_mapping(
        {
            "ingest": {"data_dir": str(root), "streams": list(streams), "source": "alpaca"},
            "server": {"listen": ""},
            "storage": {"roll_seconds": 0.5, **storage},
            "pipeline": {"bars": ["time:1m"]},
        }
    )
    return base.replace(ingest=dataclasses.replace(base.ingest, data_dir=root))


async def run_scenario(
    settings: Settings,
    script: Callable[[FakeAlpaca], None],
    expected: Mapping[tuple[StreamName, str], int],
    *,
    alpaca: Mapping[str, Any] | None = None,
    during: Callable[[FakeAlpaca, Metrics], Coroutine[Any, Any, None]] | None = None,
    limit: float = 30.0,
    fake: FakeAlpaca | None = None,
) -> Outcome:
    """Run the daemon against a scripted fake until `expected` rows were taken, then stop it."""
    fake = fake or FakeAlpaca()
    await fake.start()
    script(fake)
    streams = settings.ingest.streams
    alpaca_settings = settings_for(fake, **(alpaca or {}))
    configured = settings.replace(
        alpaca=alpaca_settings,
        streams={s: StreamSettings(symbols=SYMBOLS[s], channels=CHANNELS[s]) for s in streams},
    )
    metrics = Metrics()
    source = AlpacaSource(
        alpaca_settings,
        {s: configured.streams[s] for s in streams},
        credentials=Credentials(fake.key, fake.secret),
        metrics=metrics,
        backfill_margin=0.1,
    )
    outcome = Outcome(metrics, fake=fake)
    stop = anyio.Event()
    started = anyio.current_time()
    try:
        with capture_logs() as logs, anyio.move_on_after(limit):
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    functools.partial(run_daemon, configured, source, stop=stop, metrics=metrics)
                )
                if during is not None:
                    tg.start_soon(during, fake, metrics)
                while not _reached(metrics, expected):  # noqa: ASYNC110 -- a test's probe
                    await anyio.sleep(0.05)
                await _quiet(metrics)
                stop.set()
        outcome.logs = [dict(event) for event in logs]
    finally:
        outcome.seconds = anyio.current_time() - started
        await fake.stop()
    return outcome


def _taken(metrics: Metrics) -> dict[tuple[str, ...], float]:
    return dict(metrics.messages.values)


def _reached(metrics: Metrics, expected: Mapping[tuple[StreamName, str], int]) -> bool:
    taken = _taken(metrics)
    return all(taken.get(key, 0) >= rows for key, rows in expected.items())


async def _quiet(metrics: Metrics, seconds: float = 0.4) -> None:
    """Wait until nothing new was taken for `seconds` (late duplicates would show up here)."""
    last = _taken(metrics)
    while True:
        await anyio.sleep(seconds)
        now = _taken(metrics)
        if now == last:
            return
        last = now
