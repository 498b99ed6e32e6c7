"""One stream type at run time: the demultiplexer and one supervised task per symbol.

The source hands every frame of the stream to `deliver`, which adds its messages to the pending
ones, in arrival order with their symbols, and returns without a task switch. The router's
flusher splits them by symbol (`ingest.batch`) and hands each symbol its batch through a bounded
inbox (`ingest.inbox`) whenever the event loop gets to it: at once when
frames trickle in, after many frames when they arrive faster than the loop turns (up to
`pending_limit` messages, after which `deliver` waits for the flush). A symbol task takes every
batch waiting in its inbox at once, so it wakes once per burst, never once per message, and
batches grow with the load. Each symbol task owns that symbol's pipeline state; an exception
inside it is logged with the symbol, counted, and the state is rebuilt while every other symbol
goes on.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import anyio
import numpy as np
import pyarrow as pa
import structlog

from ingest.batch import TRADES, Arrivals, Grouped, Rows, SymbolBatch, TradeRuns
from ingest.config import PipelineSettings, Settings, StreamName
from ingest.corrections import apply_correction
from ingest.inbox import Inbox
from ingest.pipeline import PipelineOutput, SymbolPipeline
from ingest.pipeline.book import SteadyBook
from ingest.pipeline.steady import Steady, take_steady
from ingest.screen import parseable_timestamps, screen_frame
from ingest.symbol_states import SymbolStates
from ingest.trade_memory import TradeMemory, TradeStore, trade_keys, trade_records
from storage.parquet import SEAL_GRACE_SECONDS, Dataset
from storage.schemas import MarketConverter, parse_timestamps, table_for, table_spec
from streams.messages import (
    AnyMessage,
    CancelError,
    Correction,
    CryptoTrade,
    NewsArticle,
    OptionTrade,
    StockTrade,
)

if TYPE_CHECKING:
    import numpy.typing as npt
    from anyio.abc import TaskStatus

    from ingest.metrics import Metrics
    from ingest.pipeline.symbol import Row
    from ingest.warmup import Warmup
    from storage.quarantine import Quarantine
    from streams.base import Frame

__all__ = ["BarListener", "PipelineFactory", "StreamRouter"]

log = structlog.get_logger("router")

_T = attrgetter("t")
_SYMBOL = attrgetter("S")
_STAMP = {"articles": attrgetter("created_at")}
_CORRECTIONS = ("corrections", "cancels")
_NOT_BULK: Final = frozenset(_CORRECTIONS)

TradeColumns = tuple["npt.NDArray[np.int64]", "npt.NDArray[np.float64]", "npt.NDArray[np.float64]"]
"""A symbol's trades as the pipeline takes them: (ts, price, size)."""
_UNKNOWN: Final = "?"
Trade = StockTrade | CryptoTrade | OptionTrade
BATCH_MESSAGES: Final = 65_536
"""Pending messages of one stream at which `deliver` waits for the flusher to hand them over...

Only a saturated stream reaches it (a trickle is flushed at once). 65,536 against 32,768: a
journal batch of 1,024 frames is one flush, and every symbol call twice the trades (~250 at 200
symbols): end to end +5 % (130k -> 137k ticks/s, mean of three interleaved runs), for ~15 MB
more held while saturated."""
BATCH_PER_SYMBOL: Final = 16
"""...or this many per symbol task, if more: with thousands of symbols a flush of 65,536 would give
each symbol a few trades, and the task hop per batch would cost more than the trades."""


_SLOT: Final = attrgetter("slot")
REMEMBER_ONE_BY_ONE: Final = 8
"""Up to this many symbols' trades are remembered one by one (`TradeStore.remember_one`), more
with one scatter (`TradeStore.remember_runs`): ~3 us a symbol against ~30 us a call."""
STEADY_MAX: Final = 64
"""Symbol batches of up to this many trades are offered to the steady path (`_take_steady`);
larger ones are cheap a trade in their own pipeline call, and mostly close a bar anyway."""


def pending_limit(symbols: int) -> int:
    """Pending messages at which a stream of `symbols` symbol tasks flushes before reading on."""
    return max(BATCH_MESSAGES, BATCH_PER_SYMBOL * symbols)


PipelineFactory = Callable[[str, PipelineSettings], SymbolPipeline]
WILDCARD = "*"


class BarListener(Protocol):
    """Told about every closed bar (the `/live` fan-out)."""

    def __call__(self, stream: StreamName, bars: list[dict[str, Any]]) -> None:
        """Receive closed bar rows (one flush's, or one symbol call's); must not block."""


@dataclass(slots=True)
class _Taken:
    """What the flush's steady step took: the symbols, the rows to write, the oldest receipt."""

    symbols: set[str] = field(default_factory=set)
    outputs: list[tuple[PipelineOutput, int]] = field(default_factory=list)
    """Each taken symbol's rows, if any, and its last trade's receipt (their `recv_ts`)."""
    oldest_recv_ns: int | None = None
    runs: TradeRuns | None = None
    fed: npt.NDArray[np.intp] | None = None
    """The runs taken (ascending) and fed to their pipeline (not failed), with `first_seq`,
    each fed run's first trade's sequence number: for `_remember_steady`."""
    first_seq: npt.NDArray[np.int64] | None = None


class StreamRouter:
    """Demultiplexes one stream type's frames to its symbol tasks, which it owns."""

    def __init__(
        self,
        stream: StreamName,
        settings: Settings,
        dataset: Dataset,
        quarantine: Quarantine,
        metrics: Metrics,
        *,
        pipeline_factory: PipelineFactory = SymbolPipeline,
        on_bar: BarListener | None = None,
    ) -> None:
        self.stream = stream
        self.symbols = SymbolStates()
        self._settings = settings
        self._dataset = dataset
        self._quarantine = quarantine
        self._metrics = metrics
        self._factory = pipeline_factory
        self._on_bar = on_bar
        self._inboxes: dict[str, Inbox[SymbolBatch]] = {}
        self._handed: list[weakref.ref[SymbolBatch]] = []
        """The batches of the last flush, while anything holds them (`SymbolBatch.detach`)."""
        self._pipelines: dict[str, SymbolPipeline] = {}
        self._memories: dict[str, TradeMemory | None] = {}
        """Each symbol task's pipeline and trade memory, for the steady path of the flusher
        (`_take_steady`), which uses them only while the task is idle."""
        self._trade_store = (
            TradeStore(settings.pipeline.correction_window) if self._remembers_trades else None
        )
        """Where every symbol's trade memory is (`ingest.trade_memory`): one scatter a flush."""
        self._book = SteadyBook()
        """The steady step's state of the pipelines it holds, across symbols."""
        self._inflight: dict[str, deque[int]] = {}
        """Per symbol, the oldest receive time of each batch handed over but not yet processed."""
        self._pending_since: int | None = None
        """Receive time of the oldest frame in the pending batches (None when there are none)."""
        self._steady_since: int | None = None
        """Receive time of the oldest trade the flush's steady step took, until its rows are
        written (None otherwise)."""
        self._group: anyio.abc.TaskGroup | None = None
        self._closed = False
        self._pending: dict[str, Arrivals] = {}
        """Per table, the messages not yet handed over, as they arrived (`ingest.batch`)."""
        self._pending_count = 0
        self._wake = anyio.Event()
        """Set when there is something to flush, or on close."""
        self._room = anyio.Event()
        """Set by each flush: wakes a `deliver` waiting for the pending batches to shrink."""
        self._tables: dict[type, str | None] = {}
        self._market: dict[str, bool] = {}
        """Per table, whether it is a market table (`MarketConverter`): only those go in bulk."""
        self.warmup: Warmup = {}
        """Closes each symbol's series start from (`ingest.warmup`); set before `run`."""

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """Own the symbol tasks until `close`; return once they have all drained."""
        async with anyio.create_task_group() as group:
            self._group = group
            for symbol in self._settings.streams[self.stream].symbols:
                if symbol != WILDCARD:
                    self._spawn(symbol)
            task_status.started()
            await self._flush_until_closed()
            for inbox in self._inboxes.values():
                inbox.close()

    def close(self) -> None:
        """No more frames: let every symbol task drain, flush its partial bars and end."""
        self._closed = True
        self._wake.set()

    @property
    def symbol_tasks(self) -> int:
        """Symbol tasks running (they grow as new symbols arrive on a wildcard stream)."""
        return len(self._inboxes)

    def flush_scale(self) -> float:
        """How many times `BATCH_MESSAGES` a saturated flush holds now (>= 1).

        The queue in front of the router scales by it: a flush can only be as large as what
        reached the router in one turn of the event loop (`ingest.intake`).
        """
        return pending_limit(self.symbol_tasks) / BATCH_MESSAGES

    def queue_depth(self) -> int:
        """Batches waiting across this stream's symbol queues (pending messages not counted)."""
        return sum(len(inbox) for inbox in self._inboxes.values())

    def oldest_inflight_ns(self) -> int | None:
        """Receive time of the oldest frame some symbol task has not yet handed to the writers."""
        stamps = [q[0] for q in self._inflight.values() if q]
        stamps += [t for t in (self._pending_since, self._steady_since) if t is not None]
        return min(stamps, default=None)

    def _spawn(self, symbol: str) -> Inbox[SymbolBatch]:
        """Start a symbol's task, its pipeline and trade memory made here, ready for the flush.

        The steady step may then take the symbol's very first batch, as it takes the rest.
        """
        assert self._group is not None, "StreamRouter.run must be started first"
        inbox = self._inboxes[symbol] = Inbox[SymbolBatch](self._settings.storage.queue_size)
        self._inflight[symbol] = deque()
        self.symbols.add(symbol)
        pipeline = self._factory(symbol, self._settings.pipeline)
        history = self.warmup.pop(symbol, None)
        if history:
            pipeline.warm_up(history)
        self._pipelines[symbol], self._memories[symbol] = pipeline, self._memory()
        self._group.start_soon(self._symbol_task, symbol, inbox, name=f"{self.stream}:{symbol}")
        return inbox

    # --- demultiplexer -------------------------------------------------------------------------

    async def deliver(self, frame: Frame) -> None:
        """Take a frame's messages for their symbols; a received frame is never half-delivered.

        The common case never awaits: the messages join the pending batches and the flusher is
        woken. Only quarantine writes and a full pending set wait, shielded from cancellation.
        """
        frame = screen_frame(frame)
        if self._pending_since is None:
            self._pending_since = frame.recv_ns
        self._split(frame.messages)
        self._wake.set()
        limit = pending_limit(self.symbol_tasks)
        if frame.rejects or self._pending_count >= limit:
            with anyio.move_on_after(SEAL_GRACE_SECONDS, shield=True):
                if frame.rejects:
                    for reject in frame.rejects:
                        self._metrics.quarantined.inc(self.stream, reject.reason)
                    await self._quarantine.put(self.stream, frame.recv_ns, frame.rejects)
                while self._pending_count >= limit:
                    await self._room.wait()

    async def _flush_until_closed(self) -> None:
        """Hand the pending batches over whenever the loop gets here, until closed and drained."""
        while True:
            if not self._pending:
                if self._closed:
                    return
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            pending, self._pending, self._pending_count = self._pending, {}, 0
            await self._flush(pending)

    async def _flush(self, pending: dict[str, Arrivals]) -> None:
        """Split one flush's messages by symbol, write its bulk tables, hand the batches over.

        Nothing of the flush outlives it here but the batches in the symbol tasks' inboxes. The
        steady step runs before anything its pipelines do not need (`Grouped.finish`).
        """
        bulk = self._bulk_tables(pending)
        grouped = Grouped.of(pending, keyed=self._remembers_trades)
        steady = self._take_steady(grouped, bulk=TRADES in bulk)
        grouped.finish(bulk)
        self._remember_steady(steady)
        batches = grouped.batches(skip=steady.symbols)
        for handed in self._handed:
            earlier = handed()
            if earlier is not None and not earlier.taken:
                earlier.detach()  # its task is behind: let the earlier flush's records go
        self._handed = [weakref.ref(b) for b in batches.values()]
        # Every batch is in flight before the first hand-over can wait: what has not reached
        # the writers stays visible to journal-segment deletion and to back-fill settling. The
        # steady step's rows are, until they are written.
        for symbol, batch in batches.items():
            if symbol not in self._inboxes:
                self._spawn(symbol)
            self._inflight[symbol].append(batch.oldest_recv_ns())
        self._steady_since = steady.oldest_recv_ns
        self._pending_since = None
        self._room.set()
        self._room = anyio.Event()
        for table, rows in grouped.bulk.items():
            await self._dataset.writer(self.stream, table).put_bulk(rows)
        await self._emit_many(steady.outputs)
        self._steady_since = None
        for symbol, batch in batches.items():
            await self._hand_over(symbol, batch)

    def _take_steady(self, grouped: Grouped, *, bulk: bool) -> _Taken:
        """Run the flush's small batches together where they can be (`ingest.pipeline.steady`).

        Offered (`bulk`: the flush's trades are to be written in bulk): a symbol's trades alone,
        while its task is idle (nothing of it in flight) and its pipeline the standard one. What
        is taken is run and accounted for here as its task would (`_account`, `_fed`), for all
        the symbols at once, and needs no batch of its own; the rows it produced and its trades'
        memory (`_remember_steady`) are the caller's (the writer converts its trades in bulk).
        """
        runs = grouped.trade_runs()
        if runs is None or not bulk:
            return _Taken()
        besides = grouped.symbols_besides(TRADES)
        counts = runs.counts
        offered: list[int] = []
        pipelines: list[SymbolPipeline] = []
        names, pipeline_of, inflight = runs.names, self._pipelines.get, self._inflight
        for k in np.flatnonzero(counts <= STEADY_MAX).tolist():
            symbol = names[k]
            pipeline = pipeline_of(symbol)  # made with its task (`_spawn`), never removed
            if pipeline is None:
                self._spawn(symbol)  # its first batch: taken here too, if it can be
                pipeline = self._pipelines[symbol]
            if type(pipeline) is SymbolPipeline and not inflight[symbol] and symbol not in besides:
                offered.append(k)
                pipelines.append(pipeline)
        if not offered:
            return _Taken()
        which = np.array(offered, np.intp)
        ts, price, size = runs.ts, runs.price, runs.size
        if len(offered) < len(runs.names):
            chosen = np.zeros(len(runs.names), np.bool_)
            chosen[which] = True
            trades = np.repeat(chosen, counts)
            ts, price, size = ts[trades], price[trades], size[trades]
        try:
            steady = take_steady(self._book, pipelines, ts, price, size, counts[which])
        except Exception:
            # Nothing was changed: every batch goes to its task, which runs the same steps.
            log.exception("steady_path_failed")
            return _Taken()
        bars, failed = self._closing_bars(runs, steady, offered)
        taken = np.flatnonzero(steady.taken)
        if not len(taken):
            return _Taken()
        runs_taken = which[taken]
        assert steady.first_seq is not None, "a batch taken is of a pipeline held"
        fed = self._account_steady(runs, runs_taken, failed)
        out = _Taken(
            {runs.names[k] for k in runs_taken.tolist()},
            oldest_recv_ns=int(runs.oldest_recv[runs_taken].min()),
            runs=runs,
            fed=runs_taken[fed],
            first_seq=steady.first_seq[taken][fed],
        )
        # Only the few with rows (all taken: the step checks and closes nothing else), in order.
        with_rows = set(steady.anomalies).union(i for i in steady.closing if offered[i] in bars)
        for i in sorted(with_rows):
            k = offered[i]
            output = PipelineOutput(bars=bars.get(k, []), anomalies=steady.anomalies.get(i, []))
            out.outputs.append((output, int(runs.last_recv[k])))
        return out

    def _account_steady(
        self, runs: TradeRuns, taken: npt.NDArray[np.intp], failed: set[int]
    ) -> npt.NDArray[np.bool_] | slice:
        """`_account` and `_fed` of the runs taken by the steady step, in bulk where they can be.

        A run whose bars failed (`failed`) is counted but not fed, as in its task. Returns which
        of `taken` were fed, to remember (`_remember_steady`).
        """
        counts = runs.counts[taken]
        now = time.time_ns()
        self._metrics.messages.inc(self.stream, TRADES, amount=int(counts.sum()))
        waited = (now - runs.oldest_recv[taken]) / 1e9
        self._metrics.pipeline_latency.observe_many(waited, self.stream)
        fed = np.array([k not in failed for k in taken.tolist()]) if failed else slice(None)
        lags = (now - runs.newest_ts[taken]) / 1e9
        self._metrics.latency.observe_many(lags[fed], self.stream, counts=counts[fed])
        names = runs.names
        codes = self.symbols.codes([names[k] for k in taken.tolist()])
        self.symbols.account_trades(
            codes, counts, runs.newest_recv[taken], runs.newest_ts[taken], fed
        )
        return fed

    def _remember_steady(self, steady: _Taken) -> None:
        """Remember the trades the steady step fed (`_keep`), once their flush is finished."""
        runs = steady.runs
        if self._trade_store is None or runs is None:
            return
        assert steady.fed is not None
        assert steady.first_seq is not None
        self._remember_runs(self._trade_store, runs, steady.fed, steady.first_seq)

    def _remember_runs(
        self,
        store: TradeStore,
        runs: TradeRuns,
        taken: npt.NDArray[np.intp],
        first_seq: npt.NDArray[np.int64],
    ) -> None:
        """Remember the trades of these runs (ascending) in their symbols' memories, at once."""
        if not len(taken):
            return
        assert runs.to_remember is not None
        names, memories, records = runs.names, self._memories, runs.to_remember
        held = cast("list[TradeMemory]", [memories[names[k]] for k in taken.tolist()])
        if len(taken) <= REMEMBER_ONE_BY_ONE:
            for k, memory, first in zip(taken.tolist(), held, first_seq.tolist(), strict=True):
                memory.remember(first, records[runs.starts[k] : runs.ends[k]])
            return
        slots = np.fromiter(map(_SLOT, held), np.intp, len(held))
        if len(taken) < len(runs.names):
            chosen = np.zeros(len(runs.names), np.bool_)
            chosen[taken] = True
            records = records[np.repeat(chosen, runs.counts)]
        store.remember_runs(slots, first_seq, runs.counts[taken], records)

    def _closing_bars(
        self, runs: TradeRuns, steady: Steady, offered: list[int]
    ) -> tuple[dict[int, list[Row]], set[int]]:
        """The bars of steady runs that close one (`Steady.close`), a symbol at a time.

        Returns the rows per run, and the runs that failed (each symbol restarted as its task
        would restart it).
        """
        bars: dict[int, list[Row]] = {}
        failed: set[int] = set()
        for i in steady.closing:
            k = offered[i]
            try:
                rows = steady.close(i)
            except Exception:
                self._symbol_failed(runs.names[k])
                failed.add(k)
                continue
            if rows:
                bars[k] = rows
        return bars, failed

    def _bulk_tables(self, pending: dict[str, Arrivals]) -> set[str]:
        """The tables of this flush the router writes in bulk (`TableWriter.put_bulk`).

        Market tables whose writer takes tables (no recovery filter), under the `block` policy
        only (a dropped batch must not have been stored), corrections and cancels never (their
        `applied` is set by the symbol task before they are written).
        """
        if self._settings.storage.backpressure != "block":
            return set()
        bulk: set[str] = set()
        for table in pending.keys() - _NOT_BULK:
            if table not in self._market:
                to_table = table_spec(self.stream, table, ()).to_table
                self._market[table] = isinstance(to_table, MarketConverter)
            if self._market[table] and self._dataset.writer(self.stream, table).takes_tables:
                bulk.add(table)
        return bulk

    async def _hand_over(self, symbol: str, batch: SymbolBatch) -> None:
        inbox = self._inboxes[symbol]
        if inbox.put_nowait(batch):
            return
        if self._settings.storage.backpressure == "block":
            await inbox.put(batch)
        else:
            self._inflight[symbol].pop()  # its own entry: the newest, as it was just added
            batch.taken = True  # dropped: nothing of it waits
            self._metrics.dropped.inc(self.stream, amount=batch.count)

    def _split(self, messages: list[AnyMessage]) -> None:
        """Add each data message to its table's pending arrivals, with its symbol."""
        if not messages:
            return
        pending = self._pending
        tables = self._tables
        kind = type(messages[0])
        if kind is not NewsArticle and all(type(m) is kind for m in messages):
            # The common frame: one kind of message (a frame of trades), taken in two calls.
            table = self._table_of(kind)
            if table is None:
                return  # control messages: the source's business
            arrivals = pending.get(table)
            if arrivals is None:
                arrivals = pending[table] = Arrivals()
            arrivals.records += messages
            arrivals.symbols += map(_SYMBOL, messages)
            self._pending_count += len(messages)
            return
        taken = 0
        for message in messages:
            kind = type(message)
            table = tables.get(kind, _UNKNOWN)
            if table is _UNKNOWN:
                table = self._table_of(kind)
            if table is None:
                continue
            if kind is NewsArticle:
                symbol = self._news_route(cast("NewsArticle", message))
            else:
                symbol = message.S  # type: ignore[union-attr]
            arrivals = pending.get(table)
            if arrivals is None:
                arrivals = pending[table] = Arrivals()
            arrivals.add(message, symbol)
            taken += 1
        self._pending_count += taken

    def _table_of(self, kind: type) -> str | None:
        """The table a kind of message goes to; None for control messages."""
        table = self._tables.get(kind, _UNKNOWN)
        if table is _UNKNOWN:
            table = self._tables[kind] = table_for(self.stream, kind)
        return table

    def _news_route(self, article: NewsArticle) -> str:
        """An article is written once: by its first symbol that has a task, else by `*`."""
        for symbol in article.symbols:
            if symbol in self._inboxes:
                return symbol
        return WILDCARD

    # --- symbol tasks --------------------------------------------------------------------------

    async def _symbol_task(self, symbol: str, inbox: Inbox[SymbolBatch]) -> None:
        with structlog.contextvars.bound_contextvars(stream=self.stream, symbol=symbol):
            inflight = self._inflight[symbol]
            while (waiting := await inbox.take_all()) is not None:
                for each in waiting:
                    each.taken = True
                # A task that fell behind catches up in one pipeline call.
                batch = waiting[0]
                for later in waiting[1:]:
                    batch.absorb(later)
                try:
                    await self._process(
                        symbol, self._pipelines[symbol], batch, self._memories[symbol]
                    )
                except Exception:
                    self._symbol_failed(symbol)
                finally:
                    for _ in waiting:
                        inflight.popleft()
            pipeline = self._pipelines[symbol]
            with anyio.move_on_after(SEAL_GRACE_SECONDS, shield=True):
                try:
                    # Stamped just after the symbol's last frame, not with the wall clock, so a
                    # recovery that replays the same frames recognises these rows as sealed.
                    last = self.symbols[symbol].last_recv_ns
                    await self._emit(pipeline.flush(), last + 1 if last else time.time_ns())
                except Exception:
                    log.exception("symbol_flush_failed")
                    self._metrics.symbol_failures.inc(self.stream)

    def _symbol_failed(self, symbol: str) -> None:
        """Supervisor boundary: one symbol's bug must not stop its siblings.

        Called while handling the exception, by the symbol's task or by the flush's steady step.
        The symbol goes on from a fresh pipeline and trade memory.
        """
        log.exception("symbol_task_failed", stream=self.stream, symbol=symbol)
        self._metrics.symbol_failures.inc(self.stream)
        self.symbols[symbol].failures += 1
        self._pipelines[symbol] = self._factory(symbol, self._settings.pipeline)
        memory = self._memories.get(symbol)
        if memory is not None:
            memory.close()
        self._memories[symbol] = self._memory()

    @property
    def _remembers_trades(self) -> bool:
        """Stock trades are remembered for corrections and cancels; other streams have none."""
        return self.stream == "stocks" and self._settings.pipeline.correction_window > 0

    def _memory(self) -> TradeMemory | None:
        return None if self._trade_store is None else self._trade_store.open()

    async def _process(
        self,
        symbol: str,
        pipeline: SymbolPipeline,
        batch: SymbolBatch,
        memory: TradeMemory | None = None,
    ) -> None:
        tables = batch.tables
        in_order = memory is not None and not _NOT_BULK.isdisjoint(tables)
        if in_order:
            assert memory is not None
            await self._correct_in_order(symbol, pipeline, memory, tables)
        for table, rows in batch.unwritten.items():
            await self._dataset.writer(self.stream, table).put(rows.records())
        oldest = self._account(symbol, batch)
        trades = tables.get(TRADES)
        if trades is not None and not in_order:
            if batch.ts is None:  # the flush's bulk parse failed: sort it out per trade
                await self._feed(symbol, pipeline, memory, cast("list[Trade]", trades.records()))
            else:  # a flush of a stream with a trade memory gathers its records too
                await self._feed_columns(
                    symbol,
                    pipeline,
                    memory,
                    (batch.ts, batch.price, batch.size),
                    batch.newest_ts,
                    batch.to_remember,
                    trades.last().recv_ns,
                )
        latency = (time.time_ns() - oldest) / 1e9
        self._metrics.pipeline_latency.observe(latency, self.stream)

    def _account(self, symbol: str, batch: SymbolBatch) -> int:
        """Count a batch's records and note what it tells `/status`; its oldest receipt."""
        state = self.symbols[symbol]
        for table, rows in batch.tables.items():
            self._metrics.messages.inc(self.stream, table, amount=rows.count)
            if table == TRADES and batch.ts is not None:
                state.note_seen(table, batch.newest_ts)  # parsed already, for the pipeline
                continue
            # A lower bound of the newest stamp, O(1) a batch: the batch's last (nanoseconds, or
            # canonical RFC 3339 UTC text, which sorts like time). A back-fill checks every row
            # from there on.
            state.note_seen(table, _STAMP.get(table, _T)(rows.last()))
        count, oldest, newest = batch.span()
        state.messages += count
        state.last_recv_ns = newest
        return oldest

    async def _feed(
        self,
        symbol: str,
        pipeline: SymbolPipeline,
        memory: TradeMemory | None,
        trades: list[Trade],
    ) -> None:
        """Run trades given as messages through the pipeline."""
        if not trades:
            return
        try:
            ts = parse_timestamps([t.t for t in trades]).cast(pa.int64()).to_numpy()
        except pa.ArrowInvalid:
            # The writer quarantines the unparseable ones; the pipeline goes on without them.
            ok = parseable_timestamps([t.t for t in trades])
            trades = [t for t, good in zip(trades, ok.tolist(), strict=True) if good]
            if not trades:
                return
            ts = parse_timestamps([t.t for t in trades]).cast(pa.int64()).to_numpy()
        price = np.fromiter((t.p for t in trades), np.float64, len(trades))
        size = np.fromiter((t.s for t in trades), np.float64, len(trades))
        remembered = None
        if memory is not None:
            keys = trade_keys(cast("list[StockTrade]", trades))
            remembered = trade_records(keys, ts, price, size)
        newest_ts, recv_ns = int(ts.max()), trades[-1].recv_ns
        await self._feed_columns(
            symbol, pipeline, memory, (ts, price, size), newest_ts, remembered, recv_ns
        )

    async def _feed_columns(
        self,
        symbol: str,
        pipeline: SymbolPipeline,
        memory: TradeMemory | None,
        columns: TradeColumns,
        newest_ts: int,
        to_remember: npt.NDArray[np.void] | None,
        recv_ns: int,
    ) -> None:
        """Run trades through the pipeline (and remember stock trades for corrections).

        `newest_ts` is the trades' latest event time; `to_remember` their `trade_records` when
        they are remembered; `recv_ns` is the last one's receipt.
        """
        ts, price, size = columns
        first = pipeline.trades_seen
        output = pipeline.on_trades(ts, price, size)
        self._fed(symbol, memory, first, to_remember, newest_ts, len(ts))
        await self._emit(output, recv_ns)

    def _fed(
        self,
        symbol: str,
        memory: TradeMemory | None,
        first: int,
        to_remember: npt.NDArray[np.void] | None,
        newest_ts: int,
        count: int,
    ) -> None:
        """Trades that went through a symbol's pipeline call: `_keep` them, note their lag.

        `count` trades numbered from `first`, observed for how far behind their newest event
        time they are (the steady step observes all of its symbols' at once).
        """
        self._keep(symbol, memory, first, to_remember, newest_ts)
        lag = (time.time_ns() - newest_ts) / 1e9
        self._metrics.latency.observe(lag, self.stream, count=count)

    def _keep(
        self,
        symbol: str,
        memory: TradeMemory | None,
        first: int,
        to_remember: npt.NDArray[np.void] | None,
        newest_ts: int,
    ) -> None:
        """Trades that went through the pipeline, by either path: remember them, note the time.

        Stock trades are remembered for corrections, numbered from `first`; their newest event
        time is noted for `/status`.
        """
        if memory is not None:
            assert to_remember is not None, "remembered trades need their records"
            memory.remember(first, to_remember)
        self.symbols[symbol].last_event_ns = newest_ts

    async def _correct_in_order(
        self,
        symbol: str,
        pipeline: SymbolPipeline,
        memory: TradeMemory,
        tables: dict[str, Rows],
    ) -> None:
        """A batch with corrections, in arrival order: each fix sees the bars as they were.

        Records are grouped by table, so arrival order is rebuilt from receive times (a stable
        sort: within one frame, trades come before the corrections received with them).
        """
        merged = [m for t in ("trades", *_CORRECTIONS) if t in tables for m in tables[t].records()]
        merged.sort(key=attrgetter("recv_ns"))
        pending: list[Trade] = []
        for message in merged:
            if isinstance(message, StockTrade):
                pending.append(message)
            elif isinstance(message, Correction | CancelError):
                await self._feed(symbol, pipeline, memory, pending)
                pending = []
                message.applied = apply_correction(pipeline, memory, message)
                kind = "correction" if isinstance(message, Correction) else "cancel"
                self._metrics.corrections.inc(self.stream, kind, message.applied)
        await self._feed(symbol, pipeline, memory, pending)

    async def _emit(self, output: PipelineOutput, recv_ns: int) -> None:
        await self._emit_many([(output, recv_ns)])

    async def _emit_many(self, outputs: list[tuple[PipelineOutput, int]]) -> None:
        """Write pipeline rows, each call's stamped with its last trade's receipt; a put a table."""
        bars: list[Row] = []
        anomalies: list[Row] = []
        for output, recv_ns in outputs:
            for bar in output.bars:
                bar["recv_ts"] = recv_ns
            bars += output.bars
            for row in output.anomalies:
                row["recv_ts"] = recv_ns
            anomalies += output.anomalies
        if bars:
            if self._on_bar is not None:
                self._on_bar(self.stream, bars)
            await self._dataset.writer(self.stream, "bars").put(bars)
        if anomalies:
            await self._dataset.writer(self.stream, "anomalies").put(anomalies)
