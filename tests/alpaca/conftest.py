"""Fixtures of the Alpaca source tests: the fake server, settings pointing at it, a list sink."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from ingest.config import STREAMS, AlpacaSettings, StreamName
from streams.alpaca.credentials import Credentials
from tests.alpaca.fake_alpaca import FakeAlpaca

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from streams.base import Frame
    from streams.messages import AnyMessage

DATA = Path(__file__).parent.parent / "data" / "alpaca_messages"
_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
_PREFIX: dict[StreamName, str] = {
    "stocks": "stocks_",
    "crypto": "crypto_",
    "options": "option_",
    "news": "news_",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def fake() -> AsyncIterator[FakeAlpaca]:
    server = FakeAlpaca()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def credentials(fake: FakeAlpaca) -> Credentials:
    return Credentials(fake.key, fake.secret)


def settings_for(fake: FakeAlpaca, **changes: Any) -> AlpacaSettings:
    """Settings pointing every URL at the fake, with short timers."""
    values: dict[str, Any] = {
        "stream_url": fake.ws_url,
        "data_url": fake.http_url,
        "trading_url": fake.http_url,
        "staleness_seconds": 5.0,
        "news_staleness_seconds": 5.0,
        "backoff_initial_seconds": 0.01,
        "backoff_max_seconds": 0.05,
        "connection_limit_backoff_seconds": 0.1,
        "rest_requests_per_minute": 60_000,
    }
    values.update(changes)
    return AlpacaSettings(**values)


def load_examples(stream: StreamName) -> list[dict[str, Any]]:
    """Every real data message example of a stream type (read at import, off the event loop)."""
    return copy.deepcopy(_EXAMPLES[stream])


def _read_examples(stream: StreamName) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(DATA.glob(_PREFIX[stream] + "*.json")):
        document = json.loads(path.read_text())
        for example in document.get("examples", []):
            messages = example["frame"] if "frame" in example else [example["message"]]
            for message in messages:
                stamp = message.get("t", message.get("created_at"))
                if not isinstance(stamp, str) or not _RFC3339.match(stamp):
                    continue  # alpaca-py's dummy msgpack stamps
                if stream == "stocks" and isinstance(message.get("c"), str):
                    continue  # the JS SDK's synthetic quote has `c` as a string
                out.append(message)
    return out


_EXAMPLES: dict[StreamName, list[dict[str, Any]]] = {s: _read_examples(s) for s in STREAMS}


class ListSink:
    """A sink that keeps every frame and lets a test wait for a number of messages."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self._changed = anyio.Event()

    async def __call__(self, frame: Frame) -> None:
        self.frames.append(frame)
        self._changed.set()
        self._changed = anyio.Event()

    @property
    def messages(self) -> list[AnyMessage]:
        return [m for f in self.frames for m in f.messages]

    @property
    def rejects(self) -> int:
        return sum(len(f.rejects) for f in self.frames)

    async def wait_for(self, count: int, rejects: int = 0) -> None:
        while len(self.messages) < count or self.rejects < rejects:
            await self._changed.wait()
