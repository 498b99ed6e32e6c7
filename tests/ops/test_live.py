"""`/live` fan-out with real aiohttp WebSocket clients on loopback."""

from __future__ import annotations

import base64
import inspect
import json
import os
import socket
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import pytest

from ingest.live import LiveHub
from tests.ops.fakes import make_bar, open_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio

TOKEN = "live-token-value"


class Reader:
    """Reads one client's messages in the background and lets the test wait for bars."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.bars: list[dict[str, Any]] = []
        self.others: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self._want = 0
        self._reached = anyio.Event()

    async def run(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            (self.bars if data["type"] == "bar" else self.others).append(data)
            if len(self.bars) >= self._want:
                self._reached.set()
        self.close_code = self.ws.close_code
        self._reached.set()

    async def wait_for(self, count: int) -> None:
        self._want = count
        if len(self.bars) < count and self.close_code is None:
            self._reached = anyio.Event()
            await self._reached.wait()
        assert len(self.bars) >= count, f"closed with {self.close_code} after {len(self.bars)}"


async def next_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    with anyio.fail_after(5):
        data: dict[str, Any] = json.loads(await ws.receive_str())
    return data


async def open_stuck_client(port: int) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads.

    A tiny receive buffer makes the server's socket back up after a few hundred kilobytes.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    sock.connect_ex(("127.0.0.1", port))
    await anyio.wait_writable(sock)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.send(
        (
            f"GET /live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        await anyio.wait_readable(sock)
        response += sock.recv(1)  # one byte at a time: leave the first frame unread
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


class _Clients:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url, self.readers = session, url, list[Reader]()

    async def connect(self, count: int, tg: anyio.abc.TaskGroup) -> list[Reader]:
        """Connect `count` clients, consume their snapshot and start their readers."""
        readers = []
        for _ in range(count):
            ws = await self.session.ws_connect(self.url + "/live")
            assert (await next_json(ws))["type"] == "snapshot"
            reader = Reader(ws)
            tg.start_soon(reader.run)
            readers.append(reader)
        return readers


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class TestFanOut:
    async def test_fifty_clients_receive_identical_bar_streams(
        self, session: aiohttp.ClientSession
    ) -> None:
        """Every one of 50 concurrent clients receives all N bars, in publish order."""
        n = 200
        with anyio.fail_after(60):
            async with open_server() as server, anyio.create_task_group() as tg:
                readers = await _Clients(session, server.url).connect(50, tg)
                assert server.hub.client_count == 50
                for i in range(n):
                    server.hub.publish("stocks", make_bar(i, "AAPL" if i % 2 else "MSFT"))
                for reader in readers:
                    await reader.wait_for(n)
                for reader in readers:
                    await reader.ws.close()
        expected = readers[0].bars
        assert [bar["bar"]["ts"] for bar in expected] == [make_bar(i)["ts"] for i in range(n)]
        assert all(reader.bars == expected for reader in readers)
        assert expected[0] == {"type": "bar", "stream": "stocks", "bar": expected[0]["bar"]}
        assert expected[0]["bar"]["rsi_14"] is None  # NaN is not JSON: sent as null

    async def test_drops_a_client_that_never_reads(self, session: aiohttp.ClientSession) -> None:
        """A stuck client is dropped and counted; the others keep receiving every bar."""
        assert not inspect.iscoroutinefunction(LiveHub.publish)  # ingestion never waits
        per_round, published = 16, 0
        with anyio.fail_after(60):
            async with open_server(client_buffer=32) as server, anyio.create_task_group() as tg:
                readers = await _Clients(session, server.url).connect(3, tg)
                stuck = await open_stuck_client(server.port)
                try:
                    for _ in range(2000):
                        for _ in range(per_round):
                            server.hub.publish("crypto", make_bar(published, pad=4000))
                            published += 1
                        for reader in readers:
                            await reader.wait_for(published)
                        if server.metrics.live_dropped.get() == 1:
                            break
                    assert server.metrics.live_dropped.get() == 1
                    assert server.hub.client_count == 3
                    for _ in range(per_round):  # the survivors go on as before
                        server.hub.publish("crypto", make_bar(published))
                        published += 1
                    for reader in readers:
                        await reader.wait_for(published)
                        await reader.ws.close()
                finally:
                    stuck.close()
        assert all(len(reader.bars) == published for reader in readers)
        assert readers[0].bars == readers[1].bars == readers[2].bars


class TestSnapshot:
    async def test_sends_the_latest_bar_of_each_series_on_connect(
        self, session: aiohttp.ClientSession
    ) -> None:
        """A new client first gets one snapshot: the newest bar per (stream, symbol, type, size)."""
        async with open_server() as server:
            server.hub.publish("stocks", make_bar(1, "AAPL"))
            server.hub.publish("stocks", make_bar(2, "AAPL"))
            server.hub.publish("stocks", {**make_bar(3, "AAPL"), "bar_type": "tick"})
            server.hub.publish("crypto", make_bar(4, "BTC/USD"))
            async with session.ws_connect(server.url + "/live") as ws:
                snapshot = await next_json(ws)
        assert snapshot["type"] == "snapshot"
        got = {(b["stream"], b["bar"]["symbol"], b["bar"]["bar_type"]) for b in snapshot["bars"]}
        assert got == {
            ("stocks", "AAPL", "time"),
            ("stocks", "AAPL", "tick"),
            ("crypto", "BTC/USD", "time"),
        }
        [aapl_time] = [
            b["bar"]
            for b in snapshot["bars"]
            if b["bar"]["bar_type"] == "time" and b["stream"] == "stocks"
        ]
        assert aapl_time["ts"] == make_bar(2)["ts"]


class TestCommands:
    async def test_subscribe_filters_symbols_and_streams(
        self, session: aiohttp.ClientSession
    ) -> None:
        """After subscribing, a client gets only its symbols on its streams."""
        async with open_server() as server:
            server.hub.publish("stocks", make_bar(0, "MSFT"))
            async with session.ws_connect(server.url + "/live") as ws:
                await next_json(ws)  # snapshot
                await ws.send_json(
                    {"action": "subscribe", "symbols": ["MSFT"], "streams": ["stocks"]}
                )
                ack = await next_json(ws)
                assert ack == {"type": "subscribed", "symbols": ["MSFT"], "streams": ["stocks"]}
                snapshot = await next_json(ws)
                assert [b["bar"]["symbol"] for b in snapshot["bars"]] == ["MSFT"]
                server.hub.publish("stocks", make_bar(1, "AAPL"))
                server.hub.publish("crypto", make_bar(2, "MSFT"))
                server.hub.publish("stocks", make_bar(3, "MSFT"))
                bar = await next_json(ws)
        assert (bar["stream"], bar["bar"]["symbol"], bar["bar"]["ts"]) == (
            "stocks",
            "MSFT",
            make_bar(3)["ts"],
        )

    async def test_status_action_answers_the_providers_status(
        self, session: aiohttp.ClientSession
    ) -> None:
        """`{"action": "status"}` is answered with status() and `type: status`."""
        async with open_server() as server, session.ws_connect(server.url + "/live") as ws:
            await next_json(ws)
            await ws.send_json({"action": "status"})
            reply = await next_json(ws)
        assert reply == {**server.state.document, "type": "status"}

    @pytest.mark.parametrize(
        ("command", "error"),
        [
            pytest.param("not json", "Expecting value", id="not-json"),
            pytest.param("[1]", "a command must be a JSON object", id="not-object"),
            pytest.param('{"action": "dance"}', "unknown action 'dance'", id="unknown"),
            pytest.param(
                '{"action": "subscribe", "symbols": "AAPL"}', "'symbols' must be", id="bad"
            ),
        ],
    )
    async def test_a_bad_command_is_answered_with_an_error(
        self, session: aiohttp.ClientSession, command: str, error: str
    ) -> None:
        """A malformed command gets an `error` message and the connection stays open."""
        async with open_server() as server, session.ws_connect(server.url + "/live") as ws:
            await next_json(ws)
            await ws.send_str(command)
            reply = await next_json(ws)
            assert reply["type"] == "error"
            assert error in reply["error"]
            await ws.send_json({"action": "status"})
            assert (await next_json(ws))["type"] == "status"


class TestLiveAccess:
    async def test_requires_the_token(self, session: aiohttp.ClientSession) -> None:
        """Without the bearer token the upgrade is refused with 401."""
        async with open_server(token=TOKEN) as server:
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await session.ws_connect(server.url + "/live")
        assert caught.value.status == 401

    @pytest.mark.parametrize(
        "how", [pytest.param("header", id="header"), pytest.param("query", id="query")]
    )
    async def test_accepts_the_token(self, session: aiohttp.ClientSession, how: str) -> None:
        """The token works as a bearer header, or as `?token=` for browsers."""
        async with open_server(token=TOKEN) as server:
            headers = {"Authorization": f"Bearer {TOKEN}"} if how == "header" else {}
            params = {"token": TOKEN} if how == "query" else {}
            async with session.ws_connect(
                server.url + "/live", headers=headers, params=params
            ) as ws:
                assert (await next_json(ws))["type"] == "snapshot"

    async def test_refuses_clients_beyond_the_limit(self, session: aiohttp.ClientSession) -> None:
        """Past `max_clients` the upgrade is refused with 503; the gauge counts the others."""
        async with open_server(max_clients=2) as server:
            async with (
                session.ws_connect(server.url + "/live") as first,
                session.ws_connect(server.url + "/live") as second,
            ):
                await next_json(first)
                await next_json(second)
                assert server.metrics.live_clients.get() == 2
                with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                    await session.ws_connect(server.url + "/live")
        assert caught.value.status == 503

    async def test_shutdown_closes_clients_as_going_away(
        self, session: aiohttp.ClientSession
    ) -> None:
        """Stopping the server closes open clients at once with 1001, not after a timeout."""
        with anyio.fail_after(1.5):  # below the 2 s close grace and the 5 s shutdown grace
            async with anyio.create_task_group() as tg:
                async with open_server() as server:
                    [reader] = await _Clients(session, server.url).connect(1, tg)
        assert reader.close_code == aiohttp.WSCloseCode.GOING_AWAY


class TestPublishMany:
    async def test_a_flush_of_bars_reaches_clients_in_order_and_is_counted(
        self, session: aiohttp.ClientSession
    ) -> None:
        """The router hands a flush's bars over at once: each goes out, in order, and counts."""
        async with open_server() as server:
            server.hub.publish_many("stocks", [make_bar(0, "MSFT")])
            async with session.ws_connect(server.url + "/live") as ws:
                snapshot = await next_json(ws)
                assert [b["bar"]["ts"] for b in snapshot["bars"]] == [make_bar(0)["ts"]]
                bars = [make_bar(i, "AAPL" if i % 2 else "MSFT") for i in (1, 2, 3)]
                server.hub.publish_many("stocks", bars)
                got = [await next_json(ws) for _ in bars]
            assert [m["bar"]["ts"] for m in got] == [b["ts"] for b in bars]
            assert server.hub.snapshot(symbols=["MSFT"])[0]["bar"]["ts"] == make_bar(2)["ts"]
            assert server.metrics.live_bars.values[("stocks",)] == 4
