"""`/live` fan-out: closed bars pushed to any number of WebSocket clients, never slowing ingestion.

The daemon calls `LiveHub.publish` for every closed bar. It is synchronous and does O(clients)
work with no await: the bar is encoded once and offered to each interested client's bounded
memory object stream with `send_nowait`. A client whose buffer is full is disconnected on the spot
and counted (`ingest_live_clients_dropped_total`): a slow consumer is the consumer's problem, and
the hub's memory stays bounded by `clients x client_buffer` messages.

Each connection runs two tasks in its own task group: a writer draining the client's stream into
the socket, and a reader handling the client's commands:

    {"action": "subscribe", "symbols": ["AAPL"], "streams": ["stocks"]}   (null or "*" = all)
    {"action": "status"}

Server messages are JSON objects with a `type`: `snapshot` (the latest bar of every series, sent
on connect and after each subscribe), `bar`, `subscribed`, `status` and `error`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from ingest.metrics import Metrics

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["LiveHub", "encode_json"]

_log = structlog.get_logger(__name__)

_HEARTBEAT_S = 30.0
"""Ping idle clients so dead peers are noticed and their buffers freed."""
_CLOSE_GRACE_S = 2.0
"""How long a closing handshake may take before the transport is simply closed."""
_MAX_INBOUND = 64 * 1024
"""Commands are tiny; anything larger is abuse."""

SeriesKey = tuple[str, str, str, str]
"""(stream, symbol, bar_type, bar_size): one bar series."""


def _plain(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become null (JSON has no NaN), containers recurse."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value


def _default(value: object) -> Any:
    """Encode what `json` does not know: numpy scalars, datetimes, anything else as text."""
    item = getattr(value, "item", None)
    if callable(item):
        return _plain(item())
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def encode_json(value: Any) -> str:
    """Encode a status document or bar as strict JSON (NaN and infinities become null).

    Args:
        value: Dicts, lists and scalars; numpy scalars and datetimes are converted.
    """
    return json.dumps(_plain(value), default=_default, allow_nan=False, separators=(",", ":"))


def _names(command: Mapping[str, Any], key: str) -> frozenset[str] | None:
    """A subscribe filter: None (everything) for a missing, null or `"*"` entry."""
    value = command.get(key)
    if value is None or value == "*":
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        msg = f"{key!r} must be a list of strings, '*' or null; got {value!r}"
        raise ValueError(msg)
    return None if "*" in value else frozenset(value)


@dataclass(eq=False, slots=True)
class _Client:
    """One connected WebSocket: its outbound buffer, filters and the scope that ends it."""

    id: int
    send: MemoryObjectSendStream[str]
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    symbols: frozenset[str] | None = None
    streams: frozenset[str] | None = None
    dropped: bool = False

    def wants(self, stream: str, symbol: str) -> bool:
        return (self.streams is None or stream in self.streams) and (
            self.symbols is None or symbol in self.symbols
        )


class LiveHub:
    """Fans closed bars out to `/live` clients and remembers the latest bar per series.

    Args:
        metrics: Where to count clients, drops and published bars.
        client_buffer: Messages queued per client before it counts as too slow and is dropped.
        max_clients: Connections beyond this are refused with 503.
    """

    def __init__(
        self, metrics: Metrics | None = None, *, client_buffer: int = 1024, max_clients: int = 1000
    ):
        self._metrics = metrics if metrics is not None else Metrics()
        self._buffer = client_buffer
        self._max_clients = max_clients
        self._clients: dict[int, _Client] = {}
        self._latest: dict[SeriesKey, tuple[str, dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._closing = False
        self._metrics.live_clients.set(0)
        self._metrics.live_dropped.inc(amount=0)

    @property
    def client_count(self) -> int:
        """Clients currently connected (dropped ones are gone at once)."""
        return len(self._clients)

    def close_all(self) -> None:
        """Disconnect every client (1001, going away): the server is shutting down."""
        self._closing = True
        for client in tuple(self._clients.values()):
            self._forget(client)
            client.scope.cancel()

    def publish(self, stream: str, bar: Mapping[str, Any]) -> None:
        """Offer one closed bar to every interested client without waiting for any of them.

        Args:
            stream: The stream type the bar came from (`stocks`, `crypto`, ...).
            bar: `symbol`, `ts` (int ns), `bar_type`, `bar_size`, OHLCV, indicators and `trend`.
                Copied shallowly for the snapshot; the caller may reuse its dict.
        """
        self.publish_many(stream, [bar])

    def publish_many(self, stream: str, bars: Sequence[Mapping[str, Any]]) -> None:
        """`publish` each of `bars` in turn (a flush's: one count, no client loop if none)."""
        latest = self._latest
        for bar in bars:
            symbol = str(bar.get("symbol"))
            copy = dict(bar)
            key = (stream, symbol, str(bar.get("bar_type")), str(bar.get("bar_size")))
            latest[key] = (stream, copy)
            if self._clients:
                self._fan_out(stream, symbol, copy)
        self._metrics.live_bars.inc(stream, amount=len(bars))

    def _fan_out(self, stream: str, symbol: str, bar: dict[str, Any]) -> None:
        text: str | None = None
        for client in tuple(self._clients.values()):
            if client.wants(stream, symbol):
                if text is None:  # encode once, and only if somebody listens
                    text = encode_json({"type": "bar", "stream": stream, "bar": bar})
                self._offer(client, text)

    def snapshot(
        self, *, symbols: Iterable[str] | None = None, streams: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """The latest bar of every series, optionally filtered, as `{"stream", "bar"}` items."""
        wanted_symbols = None if symbols is None else set(symbols)
        wanted_streams = None if streams is None else set(streams)
        return [
            {"stream": stream, "bar": bar}
            for (stream, symbol, _, _), (_, bar) in sorted(self._latest.items())
            if (wanted_streams is None or stream in wanted_streams)
            and (wanted_symbols is None or symbol in wanted_symbols)
        ]

    async def handle(
        self, request: web.Request, status: Callable[[], Mapping[str, Any]]
    ) -> web.StreamResponse:
        """Serve one `/live` WebSocket until the client leaves or is dropped.

        Args:
            request: The upgrade request (authorization is the caller's job).
            status: Produces the document answered to `{"action": "status"}`.
        """
        if self._closing or len(self._clients) >= self._max_clients:
            return web.Response(status=503, text="/live is full or shutting down\n")
        ws = web.WebSocketResponse(
            heartbeat=_HEARTBEAT_S, timeout=_CLOSE_GRACE_S, max_msg_size=_MAX_INBOUND
        )
        await ws.prepare(request)
        send, receive = anyio.create_memory_object_stream[str](self._buffer)
        client = _Client(next(self._ids), send)
        log = _log.bind(client_id=client.id, peer=request.remote)
        # Register and queue the snapshot in one synchronous step: no bar can slip in between.
        self._clients[client.id] = client
        self._metrics.live_clients.set(len(self._clients))
        self._offer(client, encode_json({"type": "snapshot", "bars": self.snapshot()}))
        log.info("live_client_connected", clients=len(self._clients))
        try:
            with client.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._write, ws, receive, tg.cancel_scope)
                    await self._read(ws, client, status)
                    tg.cancel_scope.cancel()
        finally:
            self._forget(client)
            send.close()
            receive.close()
            code = (
                WSCloseCode.TRY_AGAIN_LATER
                if client.dropped
                else WSCloseCode.GOING_AWAY
                if self._closing
                else WSCloseCode.OK
            )
            # A stuck peer cannot hold the handler: on timeout aiohttp closes the transport.
            with anyio.move_on_after(_CLOSE_GRACE_S, shield=True):
                await ws.close(code=code, message=b"slow consumer" if client.dropped else b"")
            log.info("live_client_disconnected", dropped=client.dropped, clients=len(self._clients))
        return ws

    def _offer(self, client: _Client, text: str) -> None:
        try:
            client.send.send_nowait(text)
        except anyio.WouldBlock:
            client.dropped = True
            self._metrics.live_dropped.inc()
            _log.warning("live_client_dropped", client_id=client.id, buffer=self._buffer)
            self._forget(client)
            client.scope.cancel()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._forget(client)

    def _forget(self, client: _Client) -> None:
        if self._clients.pop(client.id, None) is not None:
            self._metrics.live_clients.set(len(self._clients))

    async def _write(
        self,
        ws: web.WebSocketResponse,
        receive: MemoryObjectReceiveStream[str],
        scope: anyio.CancelScope,
    ) -> None:
        """Drain the client's buffer into its socket; a vanished peer ends the connection."""
        try:
            async for text in receive:
                await ws.send_str(text)
        except ConnectionError:
            pass
        scope.cancel()

    async def _read(
        self, ws: web.WebSocketResponse, client: _Client, status: Callable[[], Mapping[str, Any]]
    ) -> None:
        """Answer the client's commands until it closes the socket."""
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                continue
            try:
                command = json.loads(message.data)
                if not isinstance(command, dict):
                    raise ValueError("a command must be a JSON object")  # noqa: EM101 - a fixed message reads best inline
                action = command.get("action")
                if action == "subscribe":
                    client.symbols = _names(command, "symbols")
                    client.streams = _names(command, "streams")
                    reply: dict[str, Any] = {
                        "type": "subscribed",
                        "symbols": None if client.symbols is None else sorted(client.symbols),
                        "streams": None if client.streams is None else sorted(client.streams),
                    }
                    self._offer(client, encode_json(reply))
                    bars = self.snapshot(symbols=client.symbols, streams=client.streams)
                    self._offer(client, encode_json({"type": "snapshot", "bars": bars}))
                elif action == "status":
                    self._offer(client, encode_json({**status(), "type": "status"}))
                else:
                    msg = f"unknown action {action!r}; expected 'subscribe' or 'status'"
                    raise ValueError(msg)
            except ValueError as exc:  # json.JSONDecodeError is a ValueError too
                self._offer(client, encode_json({"type": "error", "error": str(exc)}))
