"""The fake speaks the real protocol: alpaca-py's own DataStream clients parse what it sends."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from alpaca.data.enums import DataFeed
from alpaca.data.live.crypto import CryptoDataStream
from alpaca.data.live.news import NewsDataStream
from alpaca.data.live.option import OptionDataStream
from alpaca.data.live.stock import StockDataStream

from storage.schemas import parse_timestamps
from tests.alpaca.conftest import load_examples
from tests.alpaca.fake_alpaca import FakeAlpaca, Send, Session

if TYPE_CHECKING:
    from collections.abc import Callable

    from alpaca.data.live.websocket import DataStream

    from ingest.config import StreamName

pytestmark = pytest.mark.anyio

_MODEL = {
    "t": "Trade",
    "q": "Quote",
    "b": "Bar",
    "u": "Bar",
    "d": "Bar",
    "s": "TradingStatus",
    "l": "dict",
    "c": "TradeCorrection",
    "x": "TradeCancel",
    "o": "Orderbook",
    "n": "News",
}


def _micros(text: str) -> datetime:
    nanos = parse_timestamps([text])[0].value
    return datetime.fromtimestamp(nanos // 1000 / 1e6, UTC).replace(
        microsecond=nanos // 1000 % 1_000_000
    )


def _expected(message: dict[str, Any]) -> tuple[str, str, datetime]:
    kind = message["T"]
    if kind == "n":
        return "News", str(message["id"]), _micros(message["created_at"])
    return _MODEL[kind], message["S"], _micros(message["t"])


def _received(model: Any) -> tuple[str, str, datetime]:
    if isinstance(model, dict):
        stamp = model["t"]  # alpaca-py has already turned the msgpack Timestamp into a datetime
        return "dict", model["S"], stamp
    name = type(model).__name__
    if name == "News":
        return name, str(model.id), model.created_at
    return name, model.symbol, model.timestamp


def _alpaca_py_parses(message: dict[str, Any]) -> bool:
    """Whether alpaca-py can take the message.

    It has no imbalance channel, and its `Bar` requires `n` and `vw`, which bars of the older docs
    lack (today's server sends them).
    """
    if message["T"] == "i":
        return False
    return message["T"] not in ("b", "u", "d") or ("n" in message and "vw" in message)


def _stock(url: str, fake: FakeAlpaca, handler: Callable[..., Any]) -> DataStream:
    stream = StockDataStream(fake.key, fake.secret, feed=DataFeed.IEX, url_override=url)
    stream.subscribe_trades(handler, "*")
    stream.subscribe_quotes(handler, "*")
    stream.subscribe_bars(handler, "*")
    stream.subscribe_updated_bars(handler, "*")
    stream.subscribe_daily_bars(handler, "*")
    stream.subscribe_trading_statuses(handler, "*")
    stream.register_trade_corrections(handler)
    stream.register_trade_cancels(handler)
    stream._handlers["lulds"]["*"] = handler  # alpaca-py has no public LULD subscription
    return stream


def _crypto(url: str, fake: FakeAlpaca, handler: Callable[..., Any]) -> DataStream:
    stream = CryptoDataStream(fake.key, fake.secret, url_override=url)
    stream.subscribe_trades(handler, "*")
    stream.subscribe_quotes(handler, "*")
    stream.subscribe_bars(handler, "*")
    stream.subscribe_orderbooks(handler, "*")
    return stream


def _options(url: str, fake: FakeAlpaca, handler: Callable[..., Any]) -> DataStream:
    stream = OptionDataStream(fake.key, fake.secret, url_override=url)
    symbols = [m["S"] for m in load_examples("options")]
    stream.subscribe_trades(handler, *symbols)
    stream.subscribe_quotes(handler, *symbols)
    return stream


def _news(url: str, fake: FakeAlpaca, handler: Callable[..., Any]) -> DataStream:
    stream = NewsDataStream(fake.key, fake.secret, url_override=url)
    stream.subscribe_news(handler, "*")
    return stream


CLIENTS: dict[
    StreamName, tuple[str, Callable[[str, FakeAlpaca, Callable[..., Any]], DataStream]]
] = {
    "stocks": ("/v2/iex", _stock),
    "crypto": ("/v1beta3/crypto/us", _crypto),
    "options": ("/v1beta1/indicative", _options),
    "news": ("/v1beta1/news", _news),
}


class TestAlpacaPyClients:
    @pytest.mark.parametrize("stream", ["stocks", "crypto", "options", "news"])
    async def test_alpaca_py_receives_every_example_parsed(
        self, fake: FakeAlpaca, stream: StreamName
    ) -> None:
        """alpaca-py's DataStream connects, authenticates, subscribes and parses every example."""
        examples = [m for m in load_examples(stream) if _alpaca_py_parses(m)]
        path, build = CLIENTS[stream]
        fake.script(path, Session(steps=[Send([examples[:2], *[[m] for m in examples[2:]]])]))
        received: list[Any] = []
        lock = threading.Lock()
        complete = threading.Event()

        async def handler(model: Any) -> None:
            with lock:
                received.append(model)
                if len(received) >= len(examples):
                    complete.set()

        client = build(fake.ws_url + path, fake, handler)
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, client.run)
                try:
                    await anyio.to_thread.run_sync(complete.wait, 10.0)
                    await anyio.sleep(0.1)  # nothing more arrives
                finally:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(client.stop)
        assert sorted(map(_received, received)) == sorted(map(_expected, examples))
        assert fake.max_active[path] == 1
