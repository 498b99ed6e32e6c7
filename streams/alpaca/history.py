"""Alpaca's REST history through alpaca-py's historical clients: paced, paged, 429-aware.

alpaca-py's clients build the requests (its request models, `url_override` = `[alpaca]
data_url`) and send them, with `raw_data=True` so timestamps keep their nanoseconds. Two things
are done here instead of by alpaca-py: it follows `next_page_token` by itself without pacing, and
it retries 429 with a fixed three-second sleep that ignores `Retry-After`. So each page is one
`client.get` call, spaced by a shared `RestPacer` (`rest_requests_per_minute`), and a 429 waits
`Retry-After` (else an exponential back-off with jitter) through tenacity before the page is asked
again; the pacer is pushed back by the same wait, so other requests do not hammer a throttled
account either (the retry itself waits in the pacer). alpaca-py's own 429 retry is switched off.

Items come back as Alpaca wire messages (`T` and `S` added) decoded by the stream's
`FrameDecoder`, so the REST path validates and quarantines exactly like the live one.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
import msgspec
import structlog
from alpaca.common.exceptions import APIError
from alpaca.data.enums import DataFeed
from alpaca.data.historical.crypto import CryptoHistoricalDataClient
from alpaca.data.historical.news import NewsClient
from alpaca.data.historical.option import OptionHistoricalDataClient
from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.data.requests import (
    CryptoBarsRequest,
    CryptoQuoteRequest,
    CryptoTradesRequest,
    NewsRequest,
    OptionBarsRequest,
    OptionTradesRequest,
    StockBarsRequest,
    StockQuotesRequest,
    StockTradesRequest,
)
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from ingest.errors import FeedConnectError, FeedProtocolError
from streams.messages import DecodedFrame, FrameDecoder

if TYPE_CHECKING:
    from alpaca.common.rest import RESTClient

    from ingest.config import AlpacaSettings, StreamName
    from streams.alpaca.credentials import Credentials

__all__ = [
    "HISTORY_CHANNELS",
    "HistoryClient",
    "HistoryRequest",
    "RateLimitedError",
    "RestPacer",
    "parse_rfc3339_ns",
    "timeframe_of",
]

_log = structlog.get_logger("streams.alpaca.history")

T = TypeVar("T")
Sleep = Callable[[float], Any]
PAGE_LIMIT: Final = 10_000
NEWS_PAGE_LIMIT: Final = 50
RETRY_AFTER_LIMIT: Final = 300.0
"""The longest `Retry-After` honoured as given (seconds)."""
REQUEST_TIMEOUT: Final = 30.0
"""Seconds a REST request may take (connect and each read); then it counts as failed."""
ATTEMPTS: Final = 8
"""A page is asked at most this many times (429s and 5xx) before its request is given up."""

HISTORY_CHANNELS: Final[dict[StreamName, tuple[str, ...]]] = {
    "stocks": ("trades", "quotes", "bars"),
    "crypto": ("trades", "quotes", "bars"),
    "options": ("trades", "bars"),
    "news": ("news",),
}
"""Channels Alpaca keeps history of, per stream type (statuses, LULDs, order books: none)."""

_WIRE_TYPE: Final = {"trades": "t", "quotes": "q", "bars": "b", "news": "n"}


class RateLimitedError(FeedConnectError):
    """HTTP 429 from the REST API; `retry_after` is the server's `Retry-After`, if it sent one."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RestPacer:
    """Spaces REST calls so a minute never holds more than `per_minute` of them."""

    def __init__(self, per_minute: int, *, sleep: Sleep = anyio.sleep) -> None:
        self.interval = 60.0 / per_minute
        self._next = 0.0
        self._sleep = sleep
        self.calls = 0

    async def slot(self) -> None:
        """Wait for the next free slot and take it."""
        now = time.monotonic()
        if self._next > now:
            await self._sleep(self._next - now)
        self._next = max(now, self._next) + self.interval
        self.calls += 1

    def back_off(self, seconds: float) -> None:
        """The server said slow down: no call before `seconds` from now."""
        self._next = max(self._next, time.monotonic() + seconds)


class _RateLimitWait(wait_base):
    """`Retry-After` when the server sent one, else full-jitter exponential back-off."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._exponential = wait_random_exponential(multiplier=initial, max=maximum)
        self._maximum = maximum

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, RateLimitedError) and error.retry_after is not None:
            return min(error.retry_after, RETRY_AFTER_LIMIT)
        return float(self._exponential(retry_state))


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    """One stream's channel over a time window, for some symbols (news: none means all)."""

    stream: StreamName
    channel: str
    symbols: tuple[str, ...]
    start_ns: int
    end_ns: int
    timeframe: TimeFrame | None = None
    """For `bars`: the bar width (default one minute)."""


def timeframe_of(seconds: float) -> TimeFrame | None:
    """The Alpaca timeframe of a time-bar width, if Alpaca has one (1-59 min, 1-23 h, 1 day)."""
    whole = round(seconds)
    if whole != seconds:
        return None
    if whole == 86_400:
        return TimeFrame(1, TimeFrameUnit.Day)
    if whole % 3600 == 0 and whole // 3600 < 24:
        return TimeFrame(whole // 3600, TimeFrameUnit.Hour)
    if whole % 60 == 0 and whole // 60 < 60:
        return TimeFrame(whole // 60, TimeFrameUnit.Minute)
    return None


def parse_rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 UTC time (`...Z`, up to nine digits)."""
    whole, _, fraction = text.removesuffix("Z").partition(".")
    seconds = int(datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp())
    return seconds * 1_000_000_000 + int((fraction + "000000000")[:9])


def _when(ns: int, *, up: bool) -> datetime:
    """A datetime (microseconds) at or before (`up`: at or after) `ns`."""
    micros = -(-ns // 1000) if up else ns // 1000
    return datetime.fromtimestamp(micros // 1_000_000, tz=UTC).replace(
        microsecond=micros % 1_000_000
    )


class HistoryClient:
    """Pages of Alpaca history for one account, decoded into the stream's message structs."""

    def __init__(
        self,
        settings: AlpacaSettings,
        credentials: Credentials,
        *,
        pacer: RestPacer | None = None,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self._settings = settings
        self._credentials = credentials
        self.pacer = pacer or RestPacer(settings.rest_requests_per_minute, sleep=sleep)
        self._sleep = sleep
        self._clients: dict[StreamName, RESTClient] = {}
        self._decoders: dict[StreamName, FrameDecoder] = {}

    def _client(self, stream: StreamName) -> RESTClient:
        client = self._clients.get(stream)
        if client is None:
            key, secret = self._credentials.key_id, self._credentials.secret_key
            url = self._settings.data_url
            made: RESTClient
            if stream == "stocks":
                made = StockHistoricalDataClient(key, secret, raw_data=True, url_override=url)
            elif stream == "crypto":
                made = CryptoHistoricalDataClient(key, secret, raw_data=True, url_override=url)
            elif stream == "options":
                made = OptionHistoricalDataClient(key, secret, raw_data=True, url_override=url)
            else:
                made = NewsClient(key, secret, raw_data=True, url_override=url)
            made._retry = 0  # 429 is retried here, honouring Retry-After (see the docstring)
            # alpaca-py sets no timeout: a silent server would hold the worker thread for ever.
            session = made._session
            session.request = functools.partial(session.request, timeout=REQUEST_TIMEOUT)  # type: ignore[method-assign]
            client = self._clients[stream] = made
        return client

    def _path_and_params(self, request: HistoryRequest) -> tuple[str, dict[str, Any]]:
        """alpaca-py's request model for the channel, as (path under the client, query)."""
        start = _when(request.start_ns, up=False)
        end = _when(request.end_ns, up=True)
        symbols = list(request.symbols)
        stream, channel = request.stream, request.channel
        feed = self._settings.feed
        stock_feed = DataFeed(feed) if feed in {f.value for f in DataFeed} else None
        frame = request.timeframe or TimeFrame(1, TimeFrameUnit.Minute)
        model: Any
        if stream == "news":
            model = NewsRequest(
                symbols=",".join(symbols) or None,
                start=start,
                end=end,
                limit=NEWS_PAGE_LIMIT,
                sort="asc",
                include_content=True,
            )
            return "/news", model.to_request_fields()
        if stream == "stocks":
            kinds: dict[str, Any] = {
                "trades": StockTradesRequest,
                "quotes": StockQuotesRequest,
                "bars": StockBarsRequest,
            }
            path = f"/stocks/{channel}"
            extra: dict[str, Any] = {"feed": stock_feed}
        elif stream == "crypto":
            kinds = {
                "trades": CryptoTradesRequest,
                "quotes": CryptoQuoteRequest,
                "bars": CryptoBarsRequest,
            }
            path = f"/crypto/{self._settings.crypto_location}/{channel}"
            extra = {}
        else:
            kinds = {"trades": OptionTradesRequest, "bars": OptionBarsRequest}
            path = f"/options/{channel}"
            extra = {}
        if channel == "bars":
            extra["timeframe"] = frame
        model = kinds[channel](
            symbol_or_symbols=symbols, start=start, end=end, limit=PAGE_LIMIT, **extra
        )
        params = model.to_request_fields()
        for name, value in list(params.items()):
            if isinstance(value, TimeFrame | DataFeed):
                params[name] = value.value
        return path, params

    async def pages(self, request: HistoryRequest) -> AsyncIterator[DecodedFrame]:
        """Every page of the request, in order, decoded (rejects kept for the quarantine).

        Raises:
            FeedConnectError: a page still failed after `ATTEMPTS` tries (429, 5xx, network).
            FeedProtocolError: the API refused the request (4xx other than 429).
        """
        path, params = self._path_and_params(request)
        client = self._client(request.stream)
        decoder = self._decoders.setdefault(request.stream, FrameDecoder(request.stream))
        token: str | None = None
        while True:
            query = dict(params, page_token=token) if token else params
            body = await self._get(client, path, query)
            items = _items(body, request)
            yield decoder.decode(msgspec.json.encode(items), time.time_ns())
            token = body.get("next_page_token") if isinstance(body, dict) else None
            if not token:
                return

    async def _get(self, client: RESTClient, path: str, query: dict[str, Any]) -> Any:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(FeedConnectError),
            stop=stop_after_attempt(ATTEMPTS),
            wait=_RateLimitWait(
                self._settings.backoff_initial_seconds, self._settings.backoff_max_seconds
            ),
            sleep=_no_sleep,  # the wait happens in the pacer, which every request goes through
            before_sleep=self._before_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self.pacer.slot()
                # A stop does not wait for a request in flight; its thread ends by the timeout.
                return await anyio.to_thread.run_sync(
                    _call, client, path, query, abandon_on_cancel=True
                )
        raise AssertionError  # pragma: no cover -- reraise=True returns or raises above

    def _before_retry(self, retry_state: RetryCallState) -> None:
        delay = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        # Every request waits: after a 429 the whole account is throttled, not just this page.
        self.pacer.back_off(delay)
        _log.warning(
            "history_retry_scheduled",
            attempt=retry_state.attempt_number,
            delay=round(delay, 3),
            reason=str(error),
        )


async def _no_sleep(seconds: float) -> None:
    """Tenacity's sleep: the pacer was pushed back by `seconds` and the retry waits there."""


def _call(client: RESTClient, path: str, query: dict[str, Any]) -> Any:
    """One GET through alpaca-py (blocking: run in a worker thread); errors as ours."""
    try:
        return client.get(path, query)
    except APIError as exc:
        status = exc.status_code
        if status == 429:
            header = exc.response.headers.get("Retry-After") if exc.response is not None else None
            try:
                retry_after = float(header) if header is not None else None
            except ValueError:
                retry_after = None
            msg = f"Alpaca REST {path}: 429 too many requests"
            raise RateLimitedError(msg, retry_after) from exc
        if status is not None and 400 <= status < 500:
            msg = f"Alpaca REST {path} refused the request: {status} {exc}"
            raise FeedProtocolError(msg) from exc
        msg = f"Alpaca REST {path} failed: {status} {exc}"
        raise FeedConnectError(msg) from exc
    except OSError as exc:  # requests' connection errors are OSErrors
        msg = f"Alpaca REST {path} unreachable: {exc!r}"
        raise FeedConnectError(msg) from exc


def _items(body: Any, request: HistoryRequest) -> Sequence[dict[str, Any]]:
    """A page's items as wire messages: `T` added, and `S` from the symbol they are listed under."""
    wire = _WIRE_TYPE[request.channel]
    if not isinstance(body, dict):
        return []
    if request.stream == "news":
        return [{**item, "T": wire} for item in body.get("news") or [] if isinstance(item, dict)]
    grouped = body.get(request.channel) or {}
    if not isinstance(grouped, dict):
        return []
    return [
        {**item, "T": wire, "S": symbol}
        for symbol, items in grouped.items()
        for item in items or []
        if isinstance(item, dict)
    ]
