"""The live Alpaca source: one supervised connection per enabled stream type.

Each stream type runs its own reconnect loop (tenacity: exponential back-off with full jitter,
capped; a long fixed wait after error 406) around `run_session`, so at most one socket per
endpoint is ever open. A session that delivered data resets the back-off. Permanent refusals stop
only their stream: 402 (credentials), 409 (plan), 410/413 (configuration); `run` raises once no
stream is left: `CredentialsError` if any stream's credentials were rejected.

Given the daemon's `Ledger` (and `[alpaca] backfill`), every session that subscribes -- the first
one after a start, and every reconnect after a drop, a staleness restart or a refusal -- fills its
gap from REST history while its live frames wait at a gate (`streams.alpaca.backfill`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

import aiohttp
import anyio
import structlog
from structlog.contextvars import bound_contextvars
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from ingest.config import OptionsSettings
from ingest.errors import (
    ConfigError,
    CredentialsError,
    FeedConnectError,
    FeedProtocolError,
    IngestError,
)
from streams.alpaca.backfill import SYMBOLS_PER_REQUEST, Backfiller, Gate
from streams.alpaca.credentials import Credentials, load_credentials
from streams.alpaca.history import HistoryClient, HistoryRequest, parse_rfc3339_ns, timeframe_of
from streams.alpaca.protocol import (
    ConnectionLimitError,
    encoding_for,
    endpoint_url,
    subscribe_action,
)
from streams.alpaca.session import SessionPlan, SessionState, run_session
from streams.discovery import discover_option_contracts
from streams.messages import MinuteBar

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from ingest.config import AlpacaSettings, StreamName, StreamSettings
    from ingest.metrics import Metrics
    from streams.base import FrameSink, Ledger
    from streams.messages import DecodedFrame
    from streams.recorder import FrameRecorder

__all__ = ["AlpacaSource", "Sleep"]

_log = structlog.get_logger("streams.alpaca")

Sleep = Callable[[float], Awaitable[None]]
_PERMANENT: Final = (CredentialsError, ConfigError, FeedProtocolError)


class _ReconnectWait(wait_base):
    """Full-jitter exponential back-off, or the long fixed wait after error 406."""

    def __init__(self, initial: float, maximum: float, connection_limit: float) -> None:
        self._exponential = wait_random_exponential(multiplier=initial, max=maximum)
        self._connection_limit = connection_limit

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        if outcome is not None and isinstance(outcome.exception(), ConnectionLimitError):
            return self._connection_limit
        return float(self._exponential(retry_state))


class _Startup:
    """Counts streams until each is subscribed or stopped for good; then the source has started."""

    def __init__(self, streams: int) -> None:
        self._pending = streams
        self.done = anyio.Event()

    def settle(self) -> None:
        self._pending -= 1
        if self._pending <= 0:
            self.done.set()


class AlpacaSource:
    """Alpaca's market-data WebSockets as a `streams.base.Source`.

    Args:
        settings: the `[alpaca]` section.
        streams: the enabled stream types and their `[streams.*]` sections.
        credentials: the API key pair; read from the environment when omitted.
        metrics: `reconnects` and `connected` are kept per stream when given.
        recorder: every received frame is recorded when given (`--record`).
        sleep: how back-off waits are slept (tests inject a recorder of delays).
        backfill_margin: seconds a gap reaches past the moment its session subscribed (clock
            skew), waited before its history is asked for.
    """

    name = "alpaca"
    ledger: Ledger | None = None
    """The daemon's record of what it holds; set before `run` to fill gaps from REST history."""

    def __init__(
        self,
        settings: AlpacaSettings,
        streams: Mapping[StreamName, StreamSettings],
        *,
        credentials: Credentials | None = None,
        metrics: Metrics | None = None,
        recorder: FrameRecorder | None = None,
        sleep: Sleep = anyio.sleep,
        backfill_margin: float = 1.0,
    ) -> None:
        self.settings = settings
        self._backfill_margin = backfill_margin
        self.streams = dict(streams)
        self._credentials = credentials if credentials is not None else load_credentials()
        self._metrics = metrics
        self._recorder = recorder
        self._sleep = sleep
        self.stopped: dict[StreamName, IngestError] = {}
        """Streams stopped for good, with the reason."""
        self.history: HistoryClient | None = None
        """The REST history client (once running with back-fill or warm-up)."""

    def __repr__(self) -> str:
        streams = sorted(self.streams)
        return f"AlpacaSource(streams={streams!r}, stream_url={self.settings.stream_url!r})"

    async def run(
        self,
        sinks: Mapping[StreamName, FrameSink],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Stream until cancelled; started once every stream is subscribed (or stopped for good).

        Raises:
            CredentialsError: every stream stopped and at least one had its credentials rejected.
            ConfigError: every stream stopped and one was refused for its configuration.
            FeedProtocolError: every stream stopped for another permanent reason (e.g. 409).
        """
        startup = _Startup(len(self.streams))
        backfiller = self._backfiller()
        async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
            for stream in self.streams:
                tg.start_soon(
                    self._run_stream, http, stream, sinks[stream], startup, backfiller, tg
                )
            await startup.done.wait()
            task_status.started()
        self._raise_when_all_stopped()

    def history_client(self) -> HistoryClient:
        """The source's one REST history client (one pacer for the account's rate limit)."""
        if self.history is None:
            self.history = HistoryClient(self.settings, self._credentials, sleep=self._sleep)
        return self.history

    async def bar_closes(
        self,
        stream: StreamName,
        symbols: Sequence[str],
        seconds: float,
        start_ns: int,
        end_ns: int,
    ) -> dict[str, list[tuple[int, float]]]:
        """Alpaca's REST bars of a width it offers, as (start ns, close) per symbol."""
        timeframe = timeframe_of(seconds)
        if timeframe is None or stream == "news":
            return {}
        closes: dict[str, list[tuple[int, float]]] = {}
        for at in range(0, len(symbols), SYMBOLS_PER_REQUEST):
            chunk = tuple(symbols[at : at + SYMBOLS_PER_REQUEST])
            request = HistoryRequest(stream, "bars", chunk, start_ns, end_ns, timeframe)
            async for page in self.history_client().pages(request):
                for bar in page.messages:
                    if isinstance(bar, MinuteBar):
                        at_ns = bar.t if isinstance(bar.t, int) else parse_rfc3339_ns(bar.t)
                        closes.setdefault(bar.S, []).append((at_ns, bar.c))
        return closes

    def _backfiller(self) -> Backfiller | None:
        if self.ledger is None or not self.settings.backfill:
            return None
        return Backfiller(
            self.settings,
            self.history_client(),
            self.ledger,
            metrics=self._metrics,
            margin_seconds=self._backfill_margin,
        )

    def _raise_when_all_stopped(self) -> None:
        reasons = "; ".join(f"{s}: {e}" for s, e in self.stopped.items())
        for kind in (CredentialsError, ConfigError):
            if any(isinstance(e, kind) for e in self.stopped.values()):
                msg = f"no Alpaca stream is left ({reasons})"
                raise kind(msg)
        msg = f"no Alpaca stream is left ({reasons})"
        raise FeedProtocolError(msg)

    async def _run_stream(
        self,
        http: aiohttp.ClientSession,
        stream: StreamName,
        sink: FrameSink,
        startup: _Startup,
        backfiller: Backfiller | None,
        group: anyio.abc.TaskGroup,
    ) -> None:
        settled = False

        def settle() -> None:
            nonlocal settled
            if not settled:
                settled = True
                startup.settle()

        with bound_contextvars(stream=stream):
            try:
                plan = await self._plan(stream)
                await self._reconnect_forever(http, plan, sink, settle, backfiller, group)
            except _PERMANENT as exc:
                self.stopped[stream] = exc
                event = (
                    "stream_disabled" if isinstance(exc, FeedProtocolError) else "stream_stopped"
                )
                _log.error(event, reason=str(exc), error=type(exc).__name__)
                self._set_connected(stream, 0)
                settle()

    async def _plan(self, stream: StreamName) -> SessionPlan:
        settings = self.streams[stream]
        symbols = list(settings.symbols)
        if isinstance(settings, OptionsSettings) and settings.underlyings:
            options = settings
            async for attempt in self._retrying():
                with attempt:
                    found = await discover_option_contracts(
                        self.settings, options, self._credentials
                    )
            symbols = sorted({*symbols, *found})
        if not symbols:
            msg = f"config key 'streams.{stream}.symbols': no symbols to subscribe" + (
                " (contract discovery found none)" if stream == "options" else ""
            )
            raise ConfigError(msg)
        staleness = (
            self.settings.news_staleness_seconds
            if stream == "news"
            else self.settings.staleness_seconds
        )
        feed = {
            "stocks": self.settings.feed,
            "crypto": self.settings.crypto_location,
            "options": self.settings.options_feed,
            "news": "news",
        }[stream]
        return SessionPlan(
            stream=stream,
            url=endpoint_url(stream, self.settings),
            encoding=encoding_for(stream),
            channels=tuple(settings.channels),
            subscribe=subscribe_action(settings.channels, symbols),
            symbols=tuple(symbols),
            staleness_seconds=staleness,
            feed=feed,
            max_frame_bytes=self.settings.max_frame_bytes,
        )

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception_type(FeedConnectError),
            stop=stop_never,
            wait=_ReconnectWait(
                self.settings.backoff_initial_seconds,
                self.settings.backoff_max_seconds,
                self.settings.connection_limit_backoff_seconds,
            ),
            sleep=self._sleep,
            before_sleep=_log_reconnect,
            reraise=True,
        )

    async def _reconnect_forever(
        self,
        http: aiohttp.ClientSession,
        plan: SessionPlan,
        sink: FrameSink,
        settle: Callable[[], None],
        backfiller: Backfiller | None,
        group: anyio.abc.TaskGroup,
    ) -> None:
        stream = plan.stream
        tap = self._tap(plan) if self._recorder is not None else None
        sessions = 0
        gate: Gate | None = None

        def subscribed() -> None:
            self._set_connected(stream, 1)
            settle()
            if backfiller is not None and gate is not None:
                group.start_soon(
                    backfiller.fill,
                    stream,
                    plan.symbols,
                    plan.channels,
                    gate,
                    sink,
                    time.time_ns(),
                    name=f"backfill:{stream}",
                )

        while True:
            # A fresh policy per healthy run: back-off grows only across sessions that failed
            # before delivering any data, and restarts once a session has been useful.
            async for attempt in self._retrying():
                with attempt:
                    if sessions:
                        self._count_reconnect(stream)
                    sessions += 1
                    state = SessionState()
                    gate = Gate(sink) if backfiller is not None else None
                    try:
                        await run_session(
                            http,
                            plan,
                            self._credentials,
                            gate.deliver if gate is not None else sink,
                            state=state,
                            on_subscribed=subscribed,
                            tap=tap,
                        )
                    except FeedConnectError as exc:
                        self._set_connected(stream, 0)
                        if state.data_frames == 0:
                            raise
                        _log.warning("feed_disconnected", reason=str(exc), frames=state.data_frames)

    def _tap(
        self, plan: SessionPlan
    ) -> Callable[[StreamName, int, bytes, DecodedFrame], Awaitable[None]]:
        recorder = self._recorder
        assert recorder is not None
        encoding = plan.encoding

        async def tap(stream: StreamName, recv_ns: int, raw: bytes, decoded: DecodedFrame) -> None:
            await recorder.record(stream, recv_ns, raw, decoded, encoding)

        return tap

    def _count_reconnect(self, stream: StreamName) -> None:
        if self._metrics is not None:
            self._metrics.reconnects.inc(stream)

    def _set_connected(self, stream: StreamName, value: int) -> None:
        if self._metrics is not None:
            self._metrics.connected.set(value, stream)


def _log_reconnect(retry_state: RetryCallState) -> None:
    outcome = retry_state.outcome
    reason = str(outcome.exception()) if outcome is not None else ""
    delay = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
    _log.warning(
        "reconnect_scheduled", attempt=retry_state.attempt_number, delay=delay, reason=reason
    )
