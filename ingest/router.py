"""One stream type at run time: the demultiplexer and one supervised task per symbol.

The source hands every frame of the stream to `deliver`, which splits it by symbol and sends each
symbol its part of the frame as one batch over a bounded memory stream: a task hop per symbol per
frame, never per message. Each symbol task owns that symbol's pipeline state; an exception inside it
is logged with the symbol, counted, and the state is rebuilt while every other symbol goes on.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Protocol, cast

import anyio
import numpy as np
import pyarrow as pa
import structlog

from ingest.config import PipelineSettings, Settings, StreamName
from ingest.corrections import TradeMemory, apply_correction
from ingest.pipeline import PipelineOutput, SymbolPipeline
from ingest.screen import parseable_timestamps, screen_frame
from storage.parquet import SEAL_GRACE_SECONDS, Dataset
from storage.schemas import parse_timestamps, table_for
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
    from anyio.abc import TaskStatus
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from ingest.metrics import Metrics
    from ingest.warmup import Warmup
    from storage.quarantine import Quarantine
    from streams.base import Frame

__all__ = ["BarListener", "PipelineFactory", "StreamRouter", "SymbolState"]

log = structlog.get_logger("router")

Batch = list[AnyMessage]
_T = attrgetter("t")
_STAMP = {"articles": attrgetter("created_at")}
Trade = StockTrade | CryptoTrade | OptionTrade
PipelineFactory = Callable[[str, PipelineSettings], SymbolPipeline]
WILDCARD = "*"


class BarListener(Protocol):
    """Told about every closed bar (the `/live` fan-out)."""

    def __call__(self, stream: StreamName, bar: dict[str, Any]) -> None:
        """Receive one closed bar row; must not block."""


@dataclass(slots=True)
class SymbolState:
    """What `/status` reports per symbol."""

    messages: int = 0
    last_event_ns: int = 0
    last_recv_ns: int = 0
    failures: int = 0
    seen: dict[str, str] = field(default_factory=dict)
    """Per table, the newest event time (RFC 3339 text) taken: where a back-fill starts."""


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
        self.symbols: dict[str, SymbolState] = {}
        self._settings = settings
        self._dataset = dataset
        self._quarantine = quarantine
        self._metrics = metrics
        self._factory = pipeline_factory
        self._on_bar = on_bar
        self._sends: dict[str, MemoryObjectSendStream[Batch]] = {}
        self._inflight: dict[str, deque[int]] = {}
        """Per symbol, the receive times of batches sent but not yet through `_process`."""
        self._group: anyio.abc.TaskGroup | None = None
        self._closed = anyio.Event()
        self._tables: dict[type, str | None] = {}
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
            await self._closed.wait()
            for send in self._sends.values():
                send.close()

    def close(self) -> None:
        """No more frames: let every symbol task drain, flush its partial bars and end."""
        self._closed.set()

    def queue_depth(self) -> int:
        """Batches waiting across this stream's symbol queues."""
        return sum(s.statistics().current_buffer_used for s in self._sends.values())

    def oldest_inflight_ns(self) -> int | None:
        """Receive time of the oldest frame some symbol task has not yet handed to the writers."""
        return min((q[0] for q in self._inflight.values() if q), default=None)

    def _spawn(self, symbol: str) -> MemoryObjectSendStream[Batch]:
        assert self._group is not None, "StreamRouter.run must be started first"
        send, receive = anyio.create_memory_object_stream[Batch](self._settings.storage.queue_size)
        self._sends[symbol] = send
        self._inflight[symbol] = deque()
        self.symbols.setdefault(symbol, SymbolState())
        self._group.start_soon(self._symbol_task, symbol, receive, name=f"{self.stream}:{symbol}")
        return send

    # --- demultiplexer -------------------------------------------------------------------------

    async def deliver(self, frame: Frame) -> None:
        """Hand a frame's messages to their symbols; a received frame is never half-delivered."""
        frame = screen_frame(frame)
        with anyio.move_on_after(SEAL_GRACE_SECONDS, shield=True):
            if frame.rejects:
                for reject in frame.rejects:
                    self._metrics.quarantined.inc(self.stream, reject.reason)
                await self._quarantine.put(self.stream, frame.recv_ns, frame.rejects)
            for symbol, batch in self._split(frame.messages).items():
                send = self._sends.get(symbol) or self._spawn(symbol)
                inflight = self._inflight[symbol]
                inflight.append(frame.recv_ns)
                if self._settings.storage.backpressure == "block":
                    await send.send(batch)
                else:
                    try:
                        send.send_nowait(batch)
                    except anyio.WouldBlock:
                        inflight.pop()
                        self._metrics.dropped.inc(self.stream, amount=len(batch))

    def _split(self, messages: list[AnyMessage]) -> dict[str, Batch]:
        batches: dict[str, Batch] = {}
        for message in messages:
            if isinstance(message, NewsArticle):
                symbol = self._news_route(message)
            else:
                found: str | None = getattr(message, "S", None)
                if found is None:
                    continue  # control message: the source's business
                symbol = found
            batch = batches.get(symbol)
            if batch is None:
                batches[symbol] = [message]
            else:
                batch.append(message)
        return batches

    def _news_route(self, article: NewsArticle) -> str:
        """An article is written once: by its first symbol that has a task, else by `*`."""
        for symbol in article.symbols:
            if symbol in self._sends:
                return symbol
        return WILDCARD

    # --- symbol tasks --------------------------------------------------------------------------

    async def _symbol_task(self, symbol: str, receive: MemoryObjectReceiveStream[Batch]) -> None:
        with structlog.contextvars.bound_contextvars(stream=self.stream, symbol=symbol):
            pipeline = self._factory(symbol, self._settings.pipeline)
            history = self.warmup.pop(symbol, None)
            if history:
                pipeline.warm_up(history)
            memory = self._memory()
            inflight = self._inflight[symbol]
            async with receive:
                async for batch in receive:
                    try:
                        await self._process(symbol, pipeline, batch, memory)
                    except Exception:
                        # Supervisor boundary: one symbol's bug must not stop its siblings.
                        log.exception("symbol_task_failed")
                        self._metrics.symbol_failures.inc(self.stream)
                        self.symbols[symbol].failures += 1
                        pipeline = self._factory(symbol, self._settings.pipeline)
                        memory = self._memory()
                    finally:
                        inflight.popleft()
            with anyio.move_on_after(SEAL_GRACE_SECONDS, shield=True):
                try:
                    # Stamped just after the symbol's last frame, not with the wall clock, so a
                    # recovery that replays the same frames recognises these rows as sealed.
                    last = self.symbols[symbol].last_recv_ns
                    await self._emit(pipeline.flush(), last + 1 if last else time.time_ns())
                except Exception:
                    log.exception("symbol_flush_failed")
                    self._metrics.symbol_failures.inc(self.stream)

    def _memory(self) -> TradeMemory | None:
        """Stock trades are remembered for corrections and cancels; other streams have none."""
        if self.stream != "stocks" or not self._settings.pipeline.correction_window:
            return None
        return TradeMemory(self._settings.pipeline.correction_window)

    async def _process(
        self,
        symbol: str,
        pipeline: SymbolPipeline,
        batch: Batch,
        memory: TradeMemory | None = None,
    ) -> None:
        by_table: dict[str, Batch] = {}
        tables = self._tables
        for message in batch:
            kind = type(message)
            table = tables.get(kind, "?")
            if table == "?":
                table = tables[kind] = table_for(self.stream, kind)
            if table is not None:
                by_table.setdefault(table, []).append(message)
        in_order = memory is not None and ("corrections" in by_table or "cancels" in by_table)
        if in_order:
            assert memory is not None
            await self._correct_in_order(symbol, pipeline, memory, batch)
        state = self.symbols[symbol]
        seen = state.seen
        for table, records in by_table.items():
            await self._dataset.writer(self.stream, table).put(records)
            self._metrics.messages.inc(self.stream, table, amount=len(records))
            # A lower bound of the newest stamp, O(1) a batch: the batch's last (canonical RFC
            # 3339 UTC text sorts like time). A back-fill checks every row from there on.
            last = _STAMP.get(table, _T)(records[-1])
            if last > seen.get(table, ""):
                seen[table] = last
        state.messages += len(batch)
        state.last_recv_ns = batch[-1].recv_ns
        trades = cast("list[Trade]", by_table.get("trades"))
        if trades and not in_order:
            await self._feed(symbol, pipeline, memory, trades)

    async def _feed(
        self,
        symbol: str,
        pipeline: SymbolPipeline,
        memory: TradeMemory | None,
        trades: list[Trade],
    ) -> None:
        """Run trades through the pipeline (and remember stock trades for corrections)."""
        state = self.symbols[symbol]
        if trades:
            try:
                ts = parse_timestamps([t.t for t in trades]).cast(pa.int64()).to_numpy()
            except pa.ArrowInvalid:
                # The writer quarantines the unparseable ones; the pipeline goes on without them.
                ok = parseable_timestamps([t.t for t in trades])
                trades = [t for t, good in zip(trades, ok.tolist(), strict=True) if good]
                if not trades:
                    return
                ts = parse_timestamps([t.t for t in trades]).cast(pa.int64()).to_numpy()
            state.last_event_ns = int(ts.max())
            price = np.fromiter((t.p for t in trades), np.float64, len(trades))
            size = np.fromiter((t.s for t in trades), np.float64, len(trades))
            if memory is not None:
                memory.remember(
                    pipeline.trades_seen, cast("list[StockTrade]", trades), ts, price, size
                )
            output = pipeline.on_trades(ts, price, size)
            lag = (time.time_ns() - state.last_event_ns) / 1e9
            self._metrics.latency.observe(lag, self.stream, count=len(trades))
            await self._emit(output, trades[-1].recv_ns)

    async def _correct_in_order(
        self, symbol: str, pipeline: SymbolPipeline, memory: TradeMemory, batch: Batch
    ) -> None:
        """A batch with corrections, in arrival order: each fix sees the bars as they were."""
        pending: list[Trade] = []
        for message in batch:
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
        if output.bars:
            for bar in output.bars:
                bar["recv_ts"] = recv_ns
                if self._on_bar is not None:
                    self._on_bar(self.stream, bar)
            await self._dataset.writer(self.stream, "bars").put(output.bars)
        if output.anomalies:
            for row in output.anomalies:
                row["recv_ts"] = recv_ns
            await self._dataset.writer(self.stream, "anomalies").put(output.anomalies)
