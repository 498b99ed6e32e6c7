"""What a symbol task receives: one symbol's records of a flush, by table, trades as columns.

The router keeps a flush's records as they arrived, one list per table with each record's symbol
beside it (`Arrivals`), and groups them by symbol once per flush (`Grouped`), so the work
that is cheap in bulk and dear per call -- parsing the trades' RFC 3339 timestamps, gathering
prices and sizes into arrays -- runs once over thousands of trades rather than once per symbol.
Symbols' batches are then built from the groups only for the symbols that need one: the trades
the router's steady step takes are read from the flush's columns directly (`TradeRuns`).

Every pass over the records reads them in arrival order, the order the decoder allocated them
in, so the reads walk memory forwards. Grouped by symbol first, each pass jumped about the ~20 MB
a saturated flush's messages take and missed the cache on nearly every record: gathering one
field of 500k trades took 0.26 µs a trade in symbol order against 0.07 in arrival order. The
grouping is a stable sort of symbol codes instead, applied to the gathered columns, and a
symbol's batch holds positions into the flush's lists (`Rows`), not the records: a symbol task
takes its columns, and records only where it needs them (a table the router did not write, a
correction applied in arrival order).

It also hands whole market tables of the flush (trades, quotes...) to the table writers in bulk
(`storage.bulk`): the symbol column comes from the grouping's codes, the receive times and the
trades' times, prices and sizes from the arrays above, so no field is gathered a second time; the
writer converts them to Arrow a thousand rows at a time. Trades whose times do not all parse are
left to the symbol tasks, which write them record by record and let the writer refuse the bad
ones.

Grouping is two steps, so that nothing a pipeline does not read delays the pipelines: `Grouped.of`
gathers what they read (symbols, times, prices, sizes, receive times), and `Grouped.finish`, run
after the router's steady step, the rest: the trades' ids and exchanges for the trade memories
and the bulk `trade_id` column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final, cast

import numpy as np
import pyarrow as pa

from ingest.trade_memory import TRADE_RECORD, trade_keys, trade_records
from storage.bulk import BulkRows
from storage.schemas import parse_timestamps

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence

    import numpy.typing as npt

    from ingest.trade_memory import TradeKeys
    from streams.messages import AnyMessage, StockTrade

__all__ = [
    "Arrivals",
    "Flush",
    "Grouped",
    "Rows",
    "SymbolBatch",
    "TradeRuns",
    "build_batches",
    "group_flush",
]

TRADES: Final = "trades"
_NO_INTS: Final = np.empty(0, np.int64)
_NO_FLOATS: Final = np.empty(0, np.float64)
_NO_RECORDS: Final = np.empty(0, TRADE_RECORD)
_TIME: Final = attrgetter("t")
_PRICE: Final = attrgetter("p")
_SIZE: Final = attrgetter("s")
_RECV: Final = attrgetter("recv_ns")


@dataclass(slots=True)
class Arrivals:
    """One table's records of a flush in arrival order, and the symbol each one goes to."""

    records: list[AnyMessage] = field(default_factory=list)
    symbols: list[str] = field(default_factory=list)

    def add(self, record: AnyMessage, symbol: str) -> None:
        """Take one more record for `symbol`."""
        self.records.append(record)
        self.symbols.append(symbol)


@dataclass(slots=True)
class Rows:
    """One symbol's records of one table: positions into flushes' record lists, in order.

    Usually one part (one flush); a symbol task that fell behind merges several (`then`).
    """

    parts: list[tuple[list[AnyMessage], npt.NDArray[np.intp]]]
    count: int
    oldest_recv_ns: int
    newest_recv_ns: int

    def records(self) -> list[AnyMessage]:
        """The records themselves."""
        out: list[AnyMessage] = []
        for source, where in self.parts:
            out += map(source.__getitem__, where.tolist())
        return out

    def last(self) -> AnyMessage:
        """The latest record."""
        source, where = self.parts[-1]
        return source[int(where[-1])]

    def detach(self) -> None:
        """Hold these records alone, letting the rest of their flush's records go."""
        if len(self.parts) == 1 and len(self.parts[0][0]) == self.count:
            return
        records = self.records()
        self.parts = [(records, np.arange(len(records), dtype=np.intp))]

    def then(self, later: Rows) -> Rows:
        """These rows followed by `later`'s."""
        return Rows(
            self.parts + later.parts,
            self.count + later.count,
            min(self.oldest_recv_ns, later.oldest_recv_ns),
            max(self.newest_recv_ns, later.newest_recv_ns),
        )


Tables = dict[str, Rows]


@dataclass(slots=True, weakref_slot=True)
class SymbolBatch:
    """One symbol's records per table; `ts`, `price`, `size` are its trades' columns.

    `ts` is None when the bulk parse of the flush failed: the symbol task parses its own trades
    then, so a malformed timestamp fails that symbol alone.
    """

    tables: Tables
    ts: npt.NDArray[np.int64] | None
    price: npt.NDArray[np.float64]
    size: npt.NDArray[np.float64]
    unwritten: Tables
    """The rows of `tables` the symbol task still hands to the writers: all but the tables the
    router already converted and wrote in bulk."""
    to_remember: npt.NDArray[np.void] | None = None
    """The trades as a stock symbol's trade memory keeps them (`trade_records`; else None)."""
    newest_ts: int = 0
    """The latest event time among the trades (when `ts` is not None and there are trades)."""
    taken: bool = False
    """Set by the symbol task when it takes the batch from its inbox."""

    @classmethod
    def empty(cls, *, keyed: bool) -> SymbolBatch:
        """A batch of no records yet (`keyed`: with the memory records of no trades)."""
        return cls({}, _NO_INTS, _NO_FLOATS, _NO_FLOATS, {}, _NO_RECORDS if keyed else None)

    def span(self) -> tuple[int, int, int]:
        """Records in the batch, and when the earliest and the latest were received: one pass."""
        tables = iter(self.tables.values())
        first = next(tables)
        count, oldest, newest = first.count, first.oldest_recv_ns, first.newest_recv_ns
        for rows in tables:
            count += rows.count
            oldest = min(oldest, rows.oldest_recv_ns)
            newest = max(newest, rows.newest_recv_ns)
        return count, oldest, newest

    @property
    def count(self) -> int:
        """Records in the batch."""
        return self.span()[0]

    def oldest_recv_ns(self) -> int:
        """When the earliest of these records was received."""
        return self.span()[1]

    def newest_recv_ns(self) -> int:
        """When the latest of these records was received."""
        return self.span()[2]

    def detach(self) -> None:
        """Hold this batch's records alone (see `Rows.detach`): for a batch left waiting.

        A batch refers to its flush's lists of records, all of them, so that the symbol tasks
        of a flush never copy theirs. One that waits for a task behind would hold every record
        of its flush as long as it waits.
        """
        for rows in (*self.tables.values(), *self.unwritten.values()):
            rows.detach()

    def absorb(self, later: SymbolBatch) -> None:
        """Append a later batch of the same symbol (a task that fell behind catches up at once)."""
        for view, more in ((self.tables, later.tables), (self.unwritten, later.unwritten)):
            for table, rows in more.items():
                mine = view.get(table)
                view[table] = rows if mine is None else mine.then(rows)
        if self.ts is None or later.ts is None:
            self.ts = None
        else:
            self.ts = np.concatenate((self.ts, later.ts))
        self.newest_ts = max(self.newest_ts, later.newest_ts)
        self.price = np.concatenate((self.price, later.price))
        self.size = np.concatenate((self.size, later.size))
        if self.to_remember is None or later.to_remember is None:
            self.to_remember = None
        else:
            self.to_remember = np.concatenate((self.to_remember, later.to_remember))


def _epoch_ns(trades: Sequence[AnyMessage]) -> npt.NDArray[np.int64]:
    return np.asarray(
        parse_timestamps(list(map(_TIME, trades))).cast(pa.int64()).to_numpy(), np.int64
    )


@dataclass(slots=True)
class _Grouping:
    """A table's rows by symbol: a stable sort of their symbol codes, and each symbol's run."""

    symbols: pa.DictionaryArray[Any, Any]
    """Each row's symbol, in arrival order (the bulk table's `symbol` column)."""
    names: list[str]
    order: npt.NDArray[np.intp]
    starts: npt.NDArray[np.intp]
    ends: npt.NDArray[np.intp]

    @classmethod
    def of(cls, symbols: list[str]) -> _Grouping:
        encoded = pa.array(symbols, pa.string()).dictionary_encode()
        codes = encoded.indices.to_numpy()
        ends = np.cumsum(np.bincount(codes)).astype(np.intp)
        starts = np.empty_like(ends)
        starts[0] = 0
        starts[1:] = ends[:-1]
        order = np.argsort(codes, kind="stable")
        names = cast("list[str]", encoded.dictionary.to_pylist())
        return cls(encoded, names, order, starts, ends)


@dataclass(slots=True)
class _TradeColumns:
    """A flush's trades as columns, in arrival order."""

    ts: npt.NDArray[np.int64] | None
    price: npt.NDArray[np.float64]
    size: npt.NDArray[np.float64]
    keys: TradeKeys | None

    @classmethod
    def of(cls, trades: list[AnyMessage]) -> _TradeColumns:
        """What the pipelines read; the keys are gathered later, if at all (`Grouped.finish`)."""
        ts: npt.NDArray[np.int64] | None
        try:
            ts = _epoch_ns(trades)
        except (pa.ArrowInvalid, ValueError):
            ts = None  # the symbol tasks parse their own: a bad stamp fails its symbol alone
        n = len(trades)
        price = np.fromiter(map(_PRICE, trades), np.float64, n)
        size = np.fromiter(map(_SIZE, trades), np.float64, n)
        return cls(ts, price, size, None)

    def known(self) -> dict[str, npt.NDArray[np.int64] | npt.NDArray[np.float64]]:
        """The trades table's columns these are (the time only when it parsed)."""
        known: dict[str, npt.NDArray[np.int64] | npt.NDArray[np.float64]] = {
            "price": self.price,
            "size": self.size,
        }
        if self.ts is not None:
            known["ts"] = self.ts
        if self.keys is not None:
            known["trade_id"] = self.keys[0]
        return known

    def sorted(self, order: npt.NDArray[np.intp]) -> _TradeColumns:
        """The same columns in `order` (the keys are not gathered yet)."""
        return _TradeColumns(
            None if self.ts is None else self.ts[order], self.price[order], self.size[order], None
        )


@dataclass(slots=True)
class Flush:
    """A flush's batches per symbol, and the tables gathered in bulk for the writers."""

    batches: dict[str, SymbolBatch]
    bulk: dict[str, BulkRows]
    """Table name: its rows of the whole flush, for its writer (`TableWriter.put_bulk`)."""


@dataclass(slots=True)
class _TableRuns:
    """One table's records of a flush, grouped by symbol, with what every batch takes of them."""

    records: list[AnyMessage]
    groups: _Grouping
    arrived_recv: npt.NDArray[np.int64]
    """Receive times in arrival order (the bulk table's)."""
    recv: npt.NDArray[np.int64]
    """Receive times in symbol order."""
    oldest: npt.NDArray[np.int64]
    newest: npt.NDArray[np.int64]
    arrived: _TradeColumns | None
    """The trades' columns in arrival order (trades only)."""
    columns: _TradeColumns | None
    """The trades' columns in symbol order (trades only)."""
    newest_ts: npt.NDArray[np.int64] | None
    remembered: npt.NDArray[np.void] | None = None
    """The trades' memory records in symbol order, once `Grouped.finish` gathered them."""


@dataclass(slots=True)
class TradeRuns:
    """A flush's trades by symbol, each symbol's a run of consecutive positions in the columns.

    For the router's steady step (`ingest.pipeline.steady`), which takes many symbols' trades
    at once and never needs one symbol's batch as an object.
    """

    names: list[str]
    starts: npt.NDArray[np.intp]
    ends: npt.NDArray[np.intp]
    ts: npt.NDArray[np.int64]
    price: npt.NDArray[np.float64]
    size: npt.NDArray[np.float64]
    oldest_recv: npt.NDArray[np.int64]
    newest_recv: npt.NDArray[np.int64]
    last_recv: npt.NDArray[np.int64]
    """Each run's last trade's receive time."""
    newest_ts: npt.NDArray[np.int64]
    grouped: _TableRuns

    @property
    def counts(self) -> npt.NDArray[np.intp]:
        """Trades in each run."""
        return self.ends - self.starts

    @property
    def to_remember(self) -> npt.NDArray[np.void] | None:
        """The trades' memory records (`trade_records`), if remembered, once finished.

        `Grouped.finish` gathers them, after the steady step.
        """
        return self.grouped.remembered


@dataclass(slots=True)
class Grouped:
    """A flush's records grouped by symbol, per table, and its tables gathered in bulk.

    Symbols' batches are built only when asked for (`batches`), after `finish`: a symbol whose
    trades the router's steady step takes needs none.
    """

    runs: dict[str, _TableRuns]
    keyed: bool
    bulk: dict[str, BulkRows] = field(default_factory=dict)
    """Table name: its rows of the whole flush, for its writer (`TableWriter.put_bulk`)."""
    finished: bool = False

    @classmethod
    def of(cls, pending: Mapping[str, Arrivals], *, keyed: bool = False) -> Grouped:
        """A flush (`pending`: table to arrivals) grouped by symbol, with what pipelines read.

        `keyed`: stock trades are remembered for corrections (their keys come with `finish`).
        """
        runs: dict[str, _TableRuns] = {}
        for table, arrivals in pending.items():
            records = arrivals.records
            if not records:
                continue
            groups = _Grouping.of(arrivals.symbols)
            recv = np.fromiter(map(_RECV, records), np.int64, len(records))
            trades = _TradeColumns.of(records) if table == TRADES else None
            by_symbol = recv[groups.order]
            columns = None if trades is None else trades.sorted(groups.order)
            newest_ts = None
            if columns is not None and columns.ts is not None:
                newest_ts = np.maximum.reduceat(columns.ts, groups.starts)
            runs[table] = _TableRuns(
                records,
                groups,
                recv,
                by_symbol,
                np.minimum.reduceat(by_symbol, groups.starts),
                np.maximum.reduceat(by_symbol, groups.starts),
                trades,
                columns,
                newest_ts,
            )
        return cls(runs, keyed)

    def finish(self, bulk: Collection[str]) -> None:
        """Gather what no pipeline waits for; once a flush, before `batches`.

        The trades' keys and memory records when `keyed`, and the tables named in `bulk` for
        their writers (trades only when their times all parsed).
        """
        assert not self.finished, "a flush is finished once"
        self.finished = True
        for table, runs in self.runs.items():
            arrived, columns = runs.arrived, runs.columns
            parsed = arrived is not None and arrived.ts is not None
            if parsed and self.keyed:
                assert arrived is not None
                assert columns is not None
                assert columns.ts is not None
                trades = cast("list[StockTrade]", runs.records)
                arrived.keys = ids, exchanges = trade_keys(trades)
                order = runs.groups.order
                keys = (ids[order], exchanges[order])
                runs.remembered = trade_records(keys, columns.ts, columns.price, columns.size)
            if table not in bulk or (arrived is not None and not parsed):
                continue
            known = {
                "symbol": runs.groups.symbols,
                "recv_ts": runs.arrived_recv,
                **(arrived.known() if arrived is not None else {}),
            }
            self.bulk[table] = BulkRows(runs.records, known, int(runs.oldest.min()))

    def trade_runs(self) -> TradeRuns | None:
        """The trades by symbol, if they parsed; None without trades or if some did not."""
        trades = self.runs.get(TRADES)
        columns = None if trades is None else trades.columns
        if trades is None or columns is None or columns.ts is None:
            return None
        assert trades.newest_ts is not None
        groups = trades.groups
        return TradeRuns(
            groups.names,
            groups.starts,
            groups.ends,
            columns.ts,
            columns.price,
            columns.size,
            trades.oldest,
            trades.newest,
            trades.recv[groups.ends - 1],
            trades.newest_ts,
            trades,
        )

    def symbols_besides(self, table: str) -> set[str]:
        """Symbols with records of any other table in the flush."""
        return {name for t, runs in self.runs.items() if t != table for name in runs.groups.names}

    def batches(self, skip: Collection[str] = ()) -> dict[str, SymbolBatch]:
        """Every symbol's batch but those in `skip` (whose records the caller took otherwise)."""
        assert self.finished, "batches are built from a finished flush"
        batches: dict[str, SymbolBatch] = {}
        keyed = self.keyed
        for table, runs in self.runs.items():
            records, groups, columns = runs.records, runs.groups, runs.columns
            written = table in self.bulk
            starts, ends = groups.starts.tolist(), groups.ends.tolist()
            oldest, newest = runs.oldest.tolist(), runs.newest.tolist()
            newest_ts = None if runs.newest_ts is None else runs.newest_ts.tolist()
            for k, symbol in enumerate(groups.names):
                if symbol in skip:
                    continue
                start, end = starts[k], ends[k]
                batch = batches.get(symbol)
                if batch is None:
                    batch = batches[symbol] = SymbolBatch.empty(keyed=keyed)
                rows = Rows([(records, groups.order[start:end])], end - start, oldest[k], newest[k])
                batch.tables[table] = rows
                if not written:
                    batch.unwritten[table] = rows
                if columns is not None:
                    part = slice(start, end)
                    batch.ts = None if columns.ts is None else columns.ts[part]
                    batch.price = columns.price[part]
                    batch.size = columns.size[part]
                    if newest_ts is not None:
                        batch.newest_ts = newest_ts[k]
                    if runs.remembered is not None:
                        batch.to_remember = runs.remembered[part]
        return batches


def group_flush(
    pending: Mapping[str, Arrivals], bulk: Collection[str] = (), *, keyed: bool = False
) -> Grouped:
    """A flush (`pending`: table to arrivals) grouped by symbol and finished: both steps at once.

    Tables named in `bulk` are also gathered in bulk for the writers, except trades whose times
    did not all parse. `keyed` (stock trades remembered for corrections): the trades' ids and
    exchange codes are gathered too, for the symbols' trade memories and the bulk `trade_id`
    column.
    """
    grouped = Grouped.of(pending, keyed=keyed)
    grouped.finish(bulk)
    return grouped


def build_batches(
    pending: Mapping[str, Arrivals], bulk: Collection[str] = (), *, keyed: bool = False
) -> Flush:
    """Every symbol's batch of a flush, and its tables gathered in bulk (`group_flush`)."""
    grouped = group_flush(pending, bulk, keyed=keyed)
    return Flush(grouped.batches(), grouped.bulk)
