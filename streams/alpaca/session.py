"""One WebSocket session with one Alpaca endpoint: connect, authenticate, subscribe, read.

A session ends by raising: `FeedConnectError` when the socket dropped, went stale or the server
asked for a reconnect, or a permanent error (see `streams.alpaca.protocol.check_error`). The
reconnect policy lives in `streams.alpaca.source`; a session never opens a second socket.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import aiohttp
import anyio
import msgspec
import structlog

from ingest.errors import FeedConnectError
from streams.alpaca.protocol import check_error
from streams.base import Frame, FrameSink
from streams.messages import (
    CONTROL_TYPES,
    AnyMessage,
    DecodedFrame,
    Encoding,
    Error,
    FrameDecoder,
    Subscription,
    Success,
)

if TYPE_CHECKING:
    from ingest.config import StreamName
    from streams.alpaca.credentials import Credentials

__all__ = ["FrameTap", "SessionPlan", "run_session"]

_log = structlog.get_logger("streams.alpaca")

AUTH_TIMEOUT: Final = 10.0
"""Alpaca closes a session that has not authenticated within 10 s (error 404)."""
CONNECT_TIMEOUT: Final = 10.0
SEND_TIMEOUT: Final = 10.0
CLOSE_TIMEOUT: Final = 5.0
HARD_LIMIT_FACTOR: Final = 4
"""A frame this many times over the cap is not read: the session ends, back-fill recovers."""

FrameTap = Callable[["StreamName", int, bytes, DecodedFrame], Awaitable[None]]
"""Sees every received frame (raw bytes and decoded) before delivery: the recorder's hook."""


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """What one connection does: where, how encoded, what to subscribe, how long silence is ok."""

    stream: StreamName
    url: str
    encoding: Encoding
    channels: tuple[str, ...]
    """Config channel names, for error messages."""
    subscribe: dict[str, object]
    """The `subscribe` action."""
    staleness_seconds: float
    feed: str
    symbols: tuple[str, ...] = ()
    """What was subscribed (for the gap back-fill)."""
    max_frame_bytes: int = 4 * 1024 * 1024
    """Larger frames are quarantined; beyond `HARD_LIMIT_FACTOR` times this the socket closes."""


@dataclass(slots=True)
class SessionState:
    """What the reconnect policy needs to know about a session once it ended."""

    subscribed: bool = False
    data_frames: int = 0


async def run_session(
    http: aiohttp.ClientSession,
    plan: SessionPlan,
    credentials: Credentials,
    sink: FrameSink,
    *,
    state: SessionState,
    on_subscribed: Callable[[], None],
    tap: FrameTap | None = None,
) -> None:
    """Run one session until it ends; always raises (see the module docstring)."""
    headers = {"Content-Type": "application/msgpack"} if plan.encoding == "msgpack" else {}
    decoder = FrameDecoder(plan.stream, plan.encoding, max_bytes=plan.max_frame_bytes)
    try:
        with anyio.fail_after(CONNECT_TIMEOUT):
            ws = await http.ws_connect(
                plan.url,
                headers=headers,
                autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT),
                max_msg_size=HARD_LIMIT_FACTOR * plan.max_frame_bytes,
            )
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        msg = f"cannot connect the {plan.stream} stream to {plan.url}: {exc!r}"
        raise FeedConnectError(msg) from exc
    try:
        async with ws:
            await _handshake(ws, plan, credentials, decoder)
            state.subscribed = True
            on_subscribed()
            await _read(ws, plan, decoder, sink, state, tap)
    except (aiohttp.ClientError, OSError) as exc:
        msg = f"the {plan.stream} stream's connection failed: {exc!r}"
        raise FeedConnectError(msg) from exc


async def _send(ws: aiohttp.ClientWebSocketResponse, plan: SessionPlan, action: object) -> None:
    with anyio.fail_after(SEND_TIMEOUT):
        if plan.encoding == "msgpack":
            await ws.send_bytes(msgspec.msgpack.encode(action))
        else:
            await ws.send_str(msgspec.json.encode(action).decode())


async def _receive(ws: aiohttp.ClientWebSocketResponse, plan: SessionPlan) -> bytes:
    """The next data-bearing WebSocket message; a close of any kind is a `FeedConnectError`."""
    message = await ws.receive()
    if message.type is aiohttp.WSMsgType.BINARY:
        data: bytes = message.data
        return data
    if message.type is aiohttp.WSMsgType.TEXT:
        text: str = message.data
        return text.encode()
    msg = (
        f"the {plan.stream} stream's connection closed ({message.type.name}, code {ws.close_code})"
    )
    raise FeedConnectError(msg)


async def _control(
    ws: aiohttp.ClientWebSocketResponse,
    plan: SessionPlan,
    decoder: FrameDecoder,
    expect: Callable[[AnyMessage], bool],
    what: str,
) -> None:
    """Read frames until one satisfies `expect`; act on errors on the way (under a deadline)."""
    try:
        with anyio.fail_after(AUTH_TIMEOUT):
            while True:
                decoded = decoder.decode(await _receive(ws, plan), time.time_ns())
                for message in decoded.messages:
                    if isinstance(message, Error):
                        check_error(
                            plan.stream, message.code, message.msg, plan.channels, plan.feed
                        )
                    elif expect(message):
                        return
    except TimeoutError as exc:
        msg = f"the {plan.stream} stream got no {what} reply within {AUTH_TIMEOUT:g} s"
        raise FeedConnectError(msg) from exc


async def _handshake(
    ws: aiohttp.ClientWebSocketResponse,
    plan: SessionPlan,
    credentials: Credentials,
    decoder: FrameDecoder,
) -> None:
    def success(text: str) -> Callable[[AnyMessage], bool]:
        return lambda m: isinstance(m, Success) and m.msg == text

    await _control(ws, plan, decoder, success("connected"), "connected")
    _log.debug("feed_connected", url=plan.url)
    await _send(
        ws, plan, {"action": "auth", "key": credentials.key_id, "secret": credentials.secret_key}
    )
    await _control(ws, plan, decoder, success("authenticated"), "authentication")
    await _send(ws, plan, plan.subscribe)
    subscribed: list[Subscription] = []

    def is_subscription(message: AnyMessage) -> bool:
        if isinstance(message, Subscription):
            subscribed.append(message)
            return True
        return False

    await _control(ws, plan, decoder, is_subscription, "subscription")
    reply = subscribed[0]
    _log.info(
        "feed_subscribed",
        url=plan.url,
        **{name: len(getattr(reply, name)) for name in _counted(reply)},
    )


def _counted(reply: Subscription) -> Sequence[str]:
    return [name for name in reply.__struct_fields__ if name != "recv_ns" and getattr(reply, name)]


async def _read(
    ws: aiohttp.ClientWebSocketResponse,
    plan: SessionPlan,
    decoder: FrameDecoder,
    sink: FrameSink,
    state: SessionState,
    tap: FrameTap | None,
) -> None:
    """Deliver data frames until the socket closes or stays silent past the staleness limit."""
    stream = plan.stream
    staleness = plan.staleness_seconds
    deadline = anyio.current_time() + staleness
    while True:
        with anyio.CancelScope(deadline=deadline) as watchdog:
            raw = await _receive(ws, plan)
        if watchdog.cancelled_caught:
            _log.warning("feed_went_stale", silent_seconds=staleness)
            msg = f"the {stream} stream was silent for {staleness:g} s"
            raise FeedConnectError(msg)
        recv_ns = time.time_ns()
        decoded = decoder.decode(raw, recv_ns)
        if tap is not None:
            await tap(stream, recv_ns, raw, decoded)
        messages = decoded.messages
        if any(isinstance(m, CONTROL_TYPES) for m in messages):
            messages = _handle_control(plan, messages)
        if messages or decoded.rejects:
            state.data_frames += 1
            deadline = anyio.current_time() + staleness
            await sink(Frame(stream, recv_ns, messages, decoded.rejects, raw, plan.encoding))


def _handle_control(plan: SessionPlan, messages: list[AnyMessage]) -> list[AnyMessage]:
    data: list[AnyMessage] = []
    for message in messages:
        if isinstance(message, Error):
            check_error(plan.stream, message.code, message.msg, plan.channels, plan.feed)
        elif isinstance(message, Subscription):
            _log.debug("subscription_changed")
        elif not isinstance(message, Success):
            data.append(message)
    return data
