"""Gap back-fill: after every (re)connect, what was missed comes from Alpaca's REST history.

Alpaca has no sequence numbers and no resume: whatever happened while a stream was disconnected,
stale, or the daemon was down exists only in the REST history. So every session that subscribes
opens a gap, per table and symbol, from the newest event time the daemon holds (`Ledger`:
in-process, else persisted by an earlier run) to the moment the session subscribed plus a margin
for clock skew -- capped at `[alpaca] backfill_max_gap` back. Symbols the daemon never held have
nothing to fill (the warm-up covers their indicators).

While the gap is filled the session's live frames are held by a `Gate` (bounded:
`HOLD_FRAMES`), so the pipeline sees the history first and the bars stay in event order; every
live frame since the reconnect is also shown to the gap's `OverlapCheck`, which drops REST rows
outside the gap and REST copies of rows held (by key). A gap whose live frames overflow the gate
releases them early; the history that follows is then late for time bars (docs/pipeline.md).

Back-filled messages are marked (`backfilled`), journaled and written to the same tables, and
counted in `ingest_backfilled_rows_total`. A gap whose REST requests keep failing is logged and
counted in `ingest_backfill_failures_total`; the stream itself goes on.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING, Final

import anyio
import structlog

from ingest.errors import FeedError
from streams.alpaca.history import HISTORY_CHANNELS, HistoryRequest
from streams.base import Frame

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ingest.config import AlpacaSettings, StreamName
    from ingest.metrics import Metrics
    from streams.alpaca.history import HistoryClient
    from streams.base import FrameSink, Ledger, OverlapCheck
    from streams.messages import AnyMessage

__all__ = ["CHANNEL_TABLES", "HOLD_FRAMES", "Backfiller", "Gate"]

_log = structlog.get_logger("streams.alpaca.backfill")

CHANNEL_TABLES: Final = {"trades": "trades", "quotes": "quotes", "bars": "vendor_bars"}
"""History channel -> the table its rows land in (news: `articles`)."""
HOLD_FRAMES: Final = 10_000
"""Live frames a gate holds (and remembers for the overlap check) before it lets them through."""
SYMBOLS_PER_REQUEST: Final = 100
START_BUCKET_NS: Final = 60 * 1_000_000_000
"""Symbols whose gaps start within the same minute share requests."""


class Gate:
    """A session's sink while its gap is filled: holds live frames, remembers them, bounded."""

    def __init__(self, sink: FrameSink, limit: int = HOLD_FRAMES) -> None:
        self._sink = sink
        self._limit = limit
        self._held: list[Frame] = []
        self._open = False
        self._lock = anyio.Lock()
        self.recorded: list[Frame] = []
        """Live frames since the reconnect, for the overlap check (at most `limit`)."""
        self.overflowed = False

    async def deliver(self, frame: Frame) -> None:
        """The session's sink: hold while the gap is filled, pass through once it is."""
        async with self._lock:
            if len(self.recorded) < self._limit:
                self.recorded.append(frame)
            else:
                self.overflowed = True
            if self._open:
                await self._sink(frame)
                return
            if len(self._held) < self._limit:
                self._held.append(frame)
                return
            _log.warning("backfill_gate_overflowed", held=len(self._held))
            await self._flush()
            await self._sink(frame)

    async def release(self) -> None:
        """Deliver what is held, in order, and pass everything through from now on."""
        async with self._lock:
            await self._flush()

    async def _flush(self) -> None:
        held, self._held = self._held, []
        for frame in held:
            await self._sink(frame)
        self._open = True


class Backfiller:
    """Fills each session's gap for one Alpaca source (all its streams share one REST client)."""

    def __init__(
        self,
        settings: AlpacaSettings,
        history: HistoryClient,
        ledger: Ledger,
        *,
        metrics: Metrics | None = None,
        margin_seconds: float = 1.0,
    ) -> None:
        self._settings = settings
        self._history = history
        self._ledger = ledger
        self._metrics = metrics
        self._margin_ns = int(margin_seconds * 1e9)
        self._margin = margin_seconds

    async def fill(
        self,
        stream: StreamName,
        symbols: Sequence[str],
        channels: Sequence[str],
        gate: Gate,
        sink: FrameSink,
        subscribed_ns: int,
    ) -> None:
        """Fill the gap a session opened when it subscribed at `subscribed_ns`; release `gate`."""
        try:
            # Where each gap starts is fixed now, before any frame of this session is let
            # through: frames received before the reconnect first reach the router.
            await self._ledger.settle(stream, subscribed_ns)
            end_ns = subscribed_ns + self._margin_ns
            starts = self._starts(stream, symbols, channels, end_ns)
            if not starts:
                return  # nothing held yet (a first start): there is no gap to speak of
            await anyio.sleep(self._margin)  # live frames stamped before `end` arrive meanwhile
            check = await self._ledger.overlap_check(stream, starts, end_ns)
            started = time.monotonic()
            news = tuple(s for s in symbols if s != "*") if stream == "news" else ()
            requests = self._requests(stream, starts, end_ns, news)
            rows = await self._fetch(stream, requests, check, gate, sink)
            _log.info(
                "gap_backfilled",
                stream=stream,
                rows=rows,
                symbols=len({symbol for _, symbol in starts}),
                seconds=round(time.monotonic() - started, 3),
                gate_overflowed=gate.overflowed,
            )
        except FeedError as exc:
            _log.error("backfill_failed", stream=stream, error=str(exc))
            if self._metrics is not None:
                self._metrics.backfill_failures.inc(stream)
        finally:
            with anyio.CancelScope(shield=True):
                await gate.release()

    def _starts(
        self,
        stream: StreamName,
        symbols: Sequence[str],
        channels: Sequence[str],
        end_ns: int,
    ) -> dict[tuple[str, str], int]:
        """(table, symbol) -> where its gap starts, for every channel Alpaca has history of."""
        floor = end_ns - int(self._settings.backfill_max_gap * 1e9)
        starts: dict[tuple[str, str], int] = {}
        truncated: list[str] = []
        for channel in channels:
            if channel not in HISTORY_CHANNELS[stream]:
                continue
            table = CHANNEL_TABLES.get(channel, "articles")
            if table == "articles":
                wanted: list[str | None] = [None]
            elif "*" in symbols:
                wanted = list(self._ledger.known_symbols(stream, table))
            else:
                wanted = list(symbols)
            for symbol in wanted:
                last = self._ledger.last_seen(stream, table, symbol)
                if last is None:
                    continue
                if last < floor:
                    truncated.append(f"{table}:{symbol or '*'}")
                starts[(table, symbol or "*")] = max(last, floor)
        if truncated:
            _log.warning("backfill_gap_truncated", stream=stream, starts=truncated[:20])
        return starts

    async def _fetch(
        self,
        stream: StreamName,
        requests: Sequence[HistoryRequest],
        check: OverlapCheck,
        gate: Gate,
        sink: FrameSink,
    ) -> int:
        remembered = 0
        written = 0
        for request in requests:
            async for page in self._history.pages(request):
                fresh = gate.recorded[remembered:]
                remembered += len(fresh)
                for frame in fresh:
                    check.remember(frame.messages)
                admitted = check.admit(page.messages)
                if not admitted and not page.rejects:
                    continue
                for message in admitted:
                    message.backfilled = True
                self._count(stream, admitted)
                written += len(admitted)
                recv_ns = time.time_ns()
                for message in admitted:
                    message.recv_ns = recv_ns
                await sink(Frame(stream, recv_ns, admitted, page.rejects, backfilled=True))
        return written

    def _requests(
        self,
        stream: StreamName,
        starts: Mapping[tuple[str, str], int],
        end_ns: int,
        news_symbols: tuple[str, ...],
    ) -> list[HistoryRequest]:
        """Requests covering every gap: symbols starting in the same minute share one."""
        buckets: dict[tuple[str, int], list[tuple[str, int]]] = defaultdict(list)
        for (table, symbol), start in starts.items():
            buckets[(table, start // START_BUCKET_NS)].append((symbol, start))
        requests: list[HistoryRequest] = []
        channel_of = {table: channel for channel, table in CHANNEL_TABLES.items()}
        for (table, _), members in sorted(buckets.items()):
            channel = channel_of.get(table, "news")
            names = sorted(symbol for symbol, _ in members)
            start = min(start for _, start in members)
            if table == "articles":
                requests.append(HistoryRequest(stream, channel, news_symbols, start, end_ns))
                continue
            for at in range(0, len(names), SYMBOLS_PER_REQUEST):
                chunk = tuple(names[at : at + SYMBOLS_PER_REQUEST])
                requests.append(HistoryRequest(stream, channel, chunk, start, end_ns))
        return requests

    def _count(self, stream: StreamName, messages: list[AnyMessage]) -> None:
        if self._metrics is None:
            return
        tally: dict[str, int] = defaultdict(int)
        for message in messages:
            tally[_TABLE_OF.get(type(message).__name__, "other")] += 1
        for table, n in tally.items():
            self._metrics.backfilled.inc(stream, table, amount=n)


_TABLE_OF: Final = {
    "StockTrade": "trades",
    "CryptoTrade": "trades",
    "OptionTrade": "trades",
    "StockQuote": "quotes",
    "CryptoQuote": "quotes",
    "MinuteBar": "vendor_bars",
    "NewsArticle": "articles",
}
