"""A fake Alpaca market-data server: real aiohttp WebSockets and REST on loopback.

It speaks the protocol of ALPACA.md: `connected`, `auth` (within 10 s, else 404), `subscribe` /
`unsubscribe` answered with the complete current subscription, JSON or MessagePack (MessagePack
when the upgrade request carries `Content-Type: application/msgpack`; the options endpoints refuse
JSON with 412), the error codes, batched data frames, and at most `connection_limit` concurrent
sessions per endpoint (406 beyond). Each endpoint plays scripted `Session`s in order, one per
connection, with faults: drop the connection, go silent, answer an error, send a malformed frame,
cut a frame mid-way, publish data the client never receives, drop a client that reads too slowly.
It also serves the REST endpoints contract discovery needs (`/v2/options/contracts`, paged, and
`/v2/stocks/trades/latest`), and the historical endpoints of everything published
(`tests.alpaca.fake_history`), on the same app.
"""

from __future__ import annotations

import calendar
import json
import socket
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import anyio
import msgpack  # type: ignore[import-untyped]
from aiohttp import web

from streams.occ import parse_occ
from tests.alpaca.fake_history import FakeHistory

__all__ = [
    "Close",
    "CutFrame",
    "Drop",
    "FakeAlpaca",
    "Publish",
    "Send",
    "SendError",
    "SendRaw",
    "Session",
    "Silence",
    "to_msgpack_timestamp",
]

Message = dict[str, Any]

_CHANNELS: dict[str, tuple[str, ...]] = {
    "stocks": (
        "trades",
        "quotes",
        "bars",
        "updatedBars",
        "dailyBars",
        "statuses",
        "lulds",
        "corrections",
        "cancelErrors",
        "imbalances",
    ),
    "crypto": ("trades", "quotes", "bars", "updatedBars", "dailyBars", "orderbooks"),
    "options": ("trades", "quotes"),
    "news": ("news",),
}
_STAMPS = ("t", "created_at", "updated_at")


@dataclass(frozen=True)
class Send:
    """Send data frames; each inner list is one frame (a JSON or MessagePack array)."""

    frames: list[list[Message]]


@dataclass(frozen=True)
class SendRaw:
    """Send bytes as they are (a malformed frame)."""

    data: bytes


@dataclass(frozen=True)
class SendError:
    """Send `[{"T":"error","code":…}]`, then close the session if `close`."""

    code: int
    msg: str = "error"
    close: bool = True


@dataclass(frozen=True)
class Drop:
    """Abort the TCP connection without a close handshake."""


@dataclass(frozen=True)
class Close:
    """Close the WebSocket cleanly from the server side."""


@dataclass(frozen=True)
class Silence:
    """Stop sending, keep the socket open and keep reading (a connected-but-silent feed)."""


@dataclass(frozen=True)
class Publish:
    """Messages the server published that this client does not receive (only REST has them)."""

    messages: list[Message]


@dataclass(frozen=True)
class CutFrame:
    """Send the first half of a data frame's bytes, then abort the connection (a drop mid-frame)."""

    frame: list[Message]


Step = Send | SendRaw | SendError | Drop | Close | Silence | Publish | CutFrame


@dataclass
class Session:
    """One connection's script: an optional error in reply to `auth`, then steps after subscribe.

    `before` is published (to REST history only) when the connection arrives: what happened on the
    market while the client was away.
    """

    auth_error: tuple[int, str] | None = None
    steps: list[Step] = field(default_factory=list)
    before: list[Message] = field(default_factory=list)


def _stream_of(path: str) -> str:
    if path.startswith("/v1beta3/crypto/"):
        return "crypto"
    if path == "/v1beta1/news":
        return "news"
    if path in ("/v1beta1/indicative", "/v1beta1/opra"):
        return "options"
    return "stocks"


def to_msgpack_timestamp(text: str) -> msgpack.Timestamp:
    """An RFC 3339 UTC string (any number of fractional digits) as a MessagePack Timestamp."""
    body = text.removesuffix("Z")
    whole, _, fraction = body.partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    nanos = int((fraction + "000000000")[:9]) if fraction else 0
    return msgpack.Timestamp(seconds, nanos)


def _to_wire_msgpack(message: Message) -> Message:
    out = dict(message)
    for key in _STAMPS:
        if isinstance(out.get(key), str):
            out[key] = to_msgpack_timestamp(out[key])
    return out


@dataclass
class _Connection:
    path: str
    stream: str
    msgpack: bool
    ws: web.WebSocketResponse
    request: web.Request
    subscriptions: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    subscribed: anyio.Event = field(default_factory=anyio.Event)
    ended: Literal["", "client_closed", "lost"] = ""
    counted: bool = True


class FakeAlpaca:
    """The fake server; `start()` it, point `stream_url`, `data_url`, `trading_url` at it."""

    def __init__(self, key: str = "test-key", secret: str = "test-secret") -> None:
        self.key = key
        self.secret = secret
        self.connection_limit = 1
        self.auth_timeout = 10.0
        self.scripts: dict[str, list[Session]] = defaultdict(list)
        self.active: dict[str, int] = defaultdict(int)
        self.max_active: dict[str, int] = defaultdict(int)
        self.connections: dict[str, int] = defaultdict(int)
        self.actions: dict[str, list[Message]] = defaultdict(list)
        """Client actions per endpoint, in order (auth secrets replaced by `***`)."""
        self.sent: dict[str, list[Message]] = defaultdict(list)
        """Data messages sent per endpoint."""
        self.contracts: list[Message] = []
        self.contracts_page_size = 2
        self.latest_trades: dict[str, Message] = {}
        self.rest_requests: list[tuple[str, dict[str, str]]] = []
        self.history = FakeHistory(self._authorized, self._websocket)
        self.slow_client_seconds: float | None = None
        """Drop a client whose socket has not taken a frame for this long (error 407)."""
        self.slow_clients = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on 127.0.0.1 on a random port (or the port it had, after a restart)."""
        app = web.Application()
        app.router.add_get("/v2/options/contracts", self._contracts)
        app.router.add_get("/v2/stocks/trades/latest", self._latest_trades)
        self.history.add_routes(app)
        app.router.add_get("/{path:.*}", self._websocket)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def restart(
        self, down_seconds: float, published: dict[str, list[Message]] | None = None
    ) -> None:
        """Go away (every connection closed, nothing listening), publish meanwhile, come back."""
        await self.stop()
        for stream, messages in (published or {}).items():
            self.history.publish(stream, messages)
        await anyio.sleep(down_seconds)
        await self.start()

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def ws_url(self) -> str:
        """The `stream_url` to configure."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """The `data_url` / `trading_url` to configure."""
        return f"http://127.0.0.1:{self.port}"

    def script(self, path: str, *sessions: Session) -> None:
        """Queue sessions for the next connections to `path` (then: subscribe and stay quiet)."""
        self.scripts[path].extend(sessions)

    # --- WebSocket ----------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        ws = web.WebSocketResponse(autoclose=False, max_msg_size=0)
        await ws.prepare(request)
        conn = _Connection(
            path=path,
            stream=_stream_of(path),
            msgpack=request.headers.get("Content-Type") == "application/msgpack",
            ws=ws,
            request=request,
        )
        if self.slow_client_seconds is not None and request.transport is not None:
            sock = request.transport.get_extra_info("socket")
            if sock is not None:  # a small send buffer, so a stalled client is felt at once
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        self.active[path] += 1
        self.max_active[path] = max(self.max_active[path], self.active[path])
        self.connections[path] += 1
        session = self.scripts[path].pop(0) if self.scripts[path] else Session()
        self.history.publish(conn.stream, session.before)
        try:
            await self._serve(conn, session)
        finally:
            self._uncount(conn)
            if not ws.closed and conn.ended != "lost":
                with anyio.move_on_after(2):
                    await ws.close()
        return ws

    def _uncount(self, conn: _Connection) -> None:
        if conn.counted:
            conn.counted = False
            self.active[conn.path] -= 1

    async def _serve(self, conn: _Connection, session: Session) -> None:
        if conn.stream == "options" and not conn.msgpack:
            await self._send(
                conn,
                [
                    {
                        "T": "error",
                        "code": 412,
                        "msg": "option messages are only available in MsgPack format",
                    }
                ],
            )
            return
        await self._send(conn, [{"T": "success", "msg": "connected"}])
        with anyio.move_on_after(self.auth_timeout) as auth_scope:
            action = await self._next_action(conn)
        if auth_scope.cancelled_caught:
            await self._send(conn, [{"T": "error", "code": 404, "msg": "auth timeout"}])
            return
        if action is None:
            return
        if action.get("action") != "auth":
            await self._send(conn, [{"T": "error", "code": 401, "msg": "not authenticated"}])
            return
        if action.get("key") != self.key or action.get("secret") != self.secret:
            await self._send(conn, [{"T": "error", "code": 402, "msg": "auth failed"}])
            return
        if session.auth_error is not None:
            code, msg = session.auth_error
            await self._send(conn, [{"T": "error", "code": code, "msg": msg}])
            return
        if self.active[conn.path] > self.connection_limit:
            await self._send(
                conn, [{"T": "error", "code": 406, "msg": "connection limit exceeded"}]
            )
            return
        await self._send(conn, [{"T": "success", "msg": "authenticated"}])
        outcome: Step | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read_actions, conn, tg.cancel_scope)
            await conn.subscribed.wait()
            outcome = await self._play(conn, session.steps)
            if isinstance(outcome, Silence):
                await anyio.sleep_forever()
            tg.cancel_scope.cancel()
        if conn.ended:
            return
        if isinstance(outcome, Drop | CutFrame):
            self._abort(conn)

    def _abort(self, conn: _Connection) -> None:
        """Abort the TCP connection without a close handshake."""
        self._uncount(conn)
        conn.ended = "lost"
        transport = conn.request.transport
        if transport is not None:
            transport.abort()

    async def _play(self, conn: _Connection, steps: list[Step]) -> Step:
        for step in steps:
            if isinstance(step, Send):
                for index, frame in enumerate(step.frames):
                    self.sent[conn.path].extend(frame)
                    self.history.publish(conn.stream, frame)
                    if not await self._send_data(conn, frame):
                        # The market goes on without the dropped client: only REST has the rest.
                        for later in step.frames[index + 1 :]:
                            self.history.publish(conn.stream, later)
                        return Drop()
            elif isinstance(step, Publish):
                self.history.publish(conn.stream, step.messages)
            elif isinstance(step, CutFrame):
                self.history.publish(conn.stream, step.frame)
                self._cut(conn, step.frame)
                return step
            elif isinstance(step, SendRaw):
                if conn.msgpack:
                    await conn.ws.send_bytes(step.data)
                else:
                    await conn.ws.send_str(step.data.decode(errors="replace"))
            elif isinstance(step, SendError):
                await self._send(conn, [{"T": "error", "code": step.code, "msg": step.msg}])
                if step.close:
                    self._uncount(conn)
                    return Close()
            else:
                if isinstance(step, Close):
                    self._uncount(conn)
                return step
        return Silence()

    async def _send_data(self, conn: _Connection, frame: list[Message]) -> bool:
        """Send a data frame; False if the client was too slow to take it (and was dropped)."""
        if self.slow_client_seconds is None:
            await self._send(conn, frame)
            return True
        with anyio.move_on_after(self.slow_client_seconds) as scope:
            await self._send(conn, frame)
        if scope.cancelled_caught:
            self.slow_clients += 1
            return False
        return True

    def _cut(self, conn: _Connection, frame: list[Message]) -> None:
        """Write a WebSocket frame header for the whole payload but only half of the payload."""
        if conn.msgpack:
            payload, opcode = msgpack.packb([_to_wire_msgpack(m) for m in frame]), 0x2
        else:
            payload, opcode = json.dumps(frame).encode(), 0x1
        length = len(payload)
        if length < 126:
            header = bytes([0x80 | opcode, length])
        elif length < 65536:
            header = bytes([0x80 | opcode, 126]) + length.to_bytes(2, "big")
        else:
            header = bytes([0x80 | opcode, 127]) + length.to_bytes(8, "big")
        transport = conn.request.transport
        if transport is not None:
            transport.write(header + payload[: length // 2])

    async def _send(self, conn: _Connection, frame: list[Message]) -> None:
        if conn.msgpack:
            await conn.ws.send_bytes(msgpack.packb([_to_wire_msgpack(m) for m in frame]))
        else:
            await conn.ws.send_str(json.dumps(frame))

    async def _next_action(self, conn: _Connection) -> Message | None:
        """The next client action, or `None` once the client closed or the connection was lost."""
        while True:
            message = await conn.ws.receive()
            if message.type is aiohttp.WSMsgType.BINARY:
                action = msgpack.unpackb(message.data)
            elif message.type is aiohttp.WSMsgType.TEXT:
                action = json.loads(message.data)
            elif message.type is aiohttp.WSMsgType.CLOSE:
                self._uncount(conn)
                conn.ended = "client_closed"
                return None
            elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                self._uncount(conn)
                conn.ended = "lost"
                return None
            else:
                continue
            logged = dict(action)
            if "secret" in logged:
                logged["secret"] = "***"
            self.actions[conn.path].append(logged)
            return dict(action)

    async def _read_actions(self, conn: _Connection, scope: anyio.CancelScope) -> None:
        while (action := await self._next_action(conn)) is not None:
            kind = action.pop("action", None)
            if kind == "auth":
                await self._send(
                    conn, [{"T": "error", "code": 403, "msg": "already authenticated"}]
                )
            elif kind in ("subscribe", "unsubscribe"):
                await self._change(conn, kind, action)
            else:
                await self._send(conn, [{"T": "error", "code": 400, "msg": "invalid syntax"}])
        scope.cancel()

    async def _change(self, conn: _Connection, kind: str, action: Message) -> None:
        allowed = _CHANNELS[conn.stream]
        for channel, symbols in action.items():
            if channel not in allowed or channel in ("corrections", "cancelErrors"):
                await self._send(
                    conn,
                    [{"T": "error", "code": 410, "msg": "invalid subscribe action for this feed"}],
                )
                return
            if conn.stream == "options" and channel == "quotes" and "*" in symbols:
                await self._send(
                    conn,
                    [
                        {
                            "T": "error",
                            "code": 413,
                            "msg": "star subscription is not allowed for option quotes",
                        }
                    ],
                )
                return
        for channel, symbols in action.items():
            targets = [channel]
            if conn.stream == "stocks" and channel == "trades":
                targets += ["corrections", "cancelErrors"]
            for target in targets:
                if kind == "subscribe":
                    conn.subscriptions[target].update(symbols)
                else:
                    conn.subscriptions[target].difference_update(symbols)
        reply: Message = {"T": "subscription"}
        for channel in allowed:
            reply[channel] = sorted(conn.subscriptions[channel])
        await self._send(conn, [reply])
        conn.subscribed.set()

    def subscriptions(self, path: str) -> list[Message]:
        """The `subscribe` actions received on `path`, in order, without the action key."""
        return [
            {k: v for k, v in a.items() if k != "action"}
            for a in self.actions[path]
            if a.get("action") == "subscribe"
        ]

    # --- REST ---------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        return (
            request.headers.get("APCA-API-KEY-ID") == self.key
            and request.headers.get("APCA-API-SECRET-KEY") == self.secret
        )

    async def _contracts(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.rest_requests.append((request.path, query))
        if not self._authorized(request):
            return web.json_response({"message": "forbidden"}, status=403)
        underlyings = set(query.get("underlying_symbols", "").split(","))
        chosen = []
        for contract in self.contracts:
            if contract["underlying_symbol"] not in underlyings:
                continue
            if not query.get("expiration_date_gte", "") <= contract["expiration_date"]:
                continue
            if contract["expiration_date"] > query.get("expiration_date_lte", "9999"):
                continue
            strike = float(contract["strike_price"])
            if not float(query.get("strike_price_gte", "0")) <= strike:
                continue
            if strike > float(query.get("strike_price_lte", "inf")):
                continue
            chosen.append(contract)
        start = int(query.get("page_token") or 0)
        size = min(int(query.get("limit") or 100), self.contracts_page_size)
        page = chosen[start : start + size]
        token = str(start + size) if start + size < len(chosen) else None
        return web.json_response({"option_contracts": page, "next_page_token": token})

    async def _latest_trades(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.rest_requests.append((request.path, query))
        if not self._authorized(request):
            return web.json_response({"message": "forbidden"}, status=403)
        symbols = query.get("symbols", "").split(",")
        trades = {s: self.latest_trades[s] for s in symbols if s in self.latest_trades}
        return web.json_response({"trades": trades})


def make_contract(symbol: str) -> Message:
    """An `/v2/options/contracts` item for an OCC symbol."""
    parsed = parse_occ(symbol)
    assert parsed is not None
    return {
        "id": str(uuid.uuid4()),
        "symbol": symbol,
        "name": f"{parsed.underlying} option",
        "status": "active",
        "tradable": True,
        "expiration_date": parsed.expiration.isoformat(),
        "root_symbol": parsed.underlying,
        "underlying_symbol": parsed.underlying,
        "underlying_asset_id": str(uuid.uuid4()),
        "type": "call" if parsed.right == "C" else "put",
        "style": "american",
        "strike_price": f"{parsed.strike:g}",
        "size": "100",
    }
