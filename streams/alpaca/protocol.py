"""Alpaca's market-data WebSocket protocol: endpoints, channel names, actions and error codes.

Pure functions and constants, no I/O: the session (`streams.alpaca.session`) speaks the protocol,
this module says what the words mean. Error replies are turned into our error tree here, so the
reconnect policy is decided by type: `FeedConnectError` is retried, everything else stops a stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import structlog

from ingest.errors import ConfigError, CredentialsError, FeedConnectError, FeedProtocolError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ingest.config import AlpacaSettings, StreamName
    from streams.messages import Encoding

__all__ = [
    "WIRE_CHANNELS",
    "ConnectionLimitError",
    "StreamDisabledError",
    "check_error",
    "encoding_for",
    "endpoint_path",
    "endpoint_url",
    "subscribe_action",
]

_log = structlog.get_logger("streams.alpaca")

WIRE_CHANNELS: Final[Mapping[str, str]] = {
    "trades": "trades",
    "quotes": "quotes",
    "bars": "bars",
    "updated_bars": "updatedBars",
    "daily_bars": "dailyBars",
    "statuses": "statuses",
    "lulds": "lulds",
    "orderbooks": "orderbooks",
    "news": "news",
}
"""Config channel name -> Alpaca's name in `subscribe` actions and `subscription` replies."""


class ConnectionLimitError(FeedConnectError):
    """Alpaca error 406: too many connections to this endpoint; retried after a long back-off."""


class StreamDisabledError(FeedProtocolError):
    """The account cannot have this stream (error 409, insufficient subscription)."""


def endpoint_path(stream: StreamName, settings: AlpacaSettings) -> str:
    """The WebSocket path of a stream type, e.g. `/v2/iex` or `/v1beta3/crypto/us`."""
    if stream == "stocks":
        prefix = "v1beta1" if settings.feed in ("boats", "overnight") else "v2"
        return f"/{prefix}/{settings.feed}"
    if stream == "crypto":
        return f"/v1beta3/crypto/{settings.crypto_location}"
    if stream == "options":
        return f"/v1beta1/{settings.options_feed}"
    return "/v1beta1/news"


def endpoint_url(stream: StreamName, settings: AlpacaSettings) -> str:
    """The full WebSocket URL of a stream type under `stream_url`."""
    return settings.stream_url.rstrip("/") + endpoint_path(stream, settings)


def encoding_for(stream: StreamName) -> Encoding:
    """Options speak MessagePack only (error 412 otherwise); the others JSON."""
    return "msgpack" if stream == "options" else "json"


def subscribe_action(channels: Sequence[str], symbols: Sequence[str]) -> dict[str, object]:
    """The `subscribe` action for config channel names and symbols."""
    action: dict[str, object] = {"action": "subscribe"}
    for channel in channels:
        action[WIRE_CHANNELS[channel]] = list(symbols)
    return action


def check_error(
    stream: StreamName, code: int, message: str, channels: Sequence[str], feed: str
) -> None:
    """Act on an `error` reply: return to go on, or raise what the reconnect policy acts on.

    Raises:
        FeedConnectError: 401, 404, 407, 500 and unknown codes: reconnect with back-off.
        ConnectionLimitError: 406: reconnect after `connection_limit_backoff_seconds`.
        CredentialsError: 402: the credentials were rejected; the stream stops.
        StreamDisabledError: 409: the plan lacks this feed; the stream stops, others go on.
        ConfigError: 410 or 413: the configuration asks for something the feed refuses.
        FeedProtocolError: 412: the options stream was not spoken in MessagePack (a bug).
    """
    if code == 403:
        return
    if code == 400:
        _log.warning("request_rejected", code=code, reason=message)
        return
    if code == 405:
        _log.error(
            "symbol_limit_exceeded",
            code=code,
            reason=message,
            hint="the plan's streaming symbol limit was reached; existing subscriptions stay, "
            "reduce the symbols of this stream or upgrade the plan",
        )
        return
    if code == 402:
        msg = (
            f"Alpaca rejected the credentials on the {stream} stream (error 402 {message!r}); "
            "check APCA_API_KEY_ID and APCA_API_SECRET_KEY"
        )
        raise CredentialsError(msg)
    if code == 406:
        msg = f"Alpaca error 406 {message!r} on the {stream} stream: connection limit exceeded"
        raise ConnectionLimitError(msg)
    if code == 409:
        msg = (
            f"{stream} stream disabled: the Alpaca plan does not include feed {feed!r} "
            f"(error 409 {message!r}); the other streams go on"
        )
        raise StreamDisabledError(msg)
    if code == 410:
        msg = (
            f"config key 'streams.{stream}.channels': {list(channels)!r} includes a channel that "
            f"feed {feed!r} does not offer (Alpaca error 410 {message!r})"
        )
        raise ConfigError(msg)
    if code == 413:
        msg = (
            f"config key 'streams.{stream}.symbols': '*' is not allowed for option quotes "
            f"(Alpaca error 413 {message!r}); list OCC symbols or underlyings instead"
        )
        raise ConfigError(msg)
    if code == 412:
        msg = f"Alpaca error 412 {message!r}: the {stream} stream must be read as MessagePack"
        raise FeedProtocolError(msg)
    msg = f"Alpaca error {code} {message!r} on the {stream} stream"
    raise FeedConnectError(msg)
