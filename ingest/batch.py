"""What a symbol task receives: one symbol's messages of a flush, by table, trades as columns.

The router builds these once per flush for every symbol at the same time, so the work that is
cheap in bulk and dear per call -- parsing the trades' RFC 3339 timestamps, gathering prices and
sizes into arrays -- runs once over thousands of trades rather than once per symbol.

It also converts whole market tables of the flush (trades, quotes...) to Arrow in one go, for
the table writers: the symbol column comes from the grouping, the trades' times, prices and sizes
from the arrays above, so the rows are never gathered a second time. A table whose records do not
convert (an unparseable time) is left to the symbol tasks, which write it record by record and
let the writer refuse the bad ones.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

import numpy as np
import pyarrow as pa

from ingest.corrections import trade_keys
from storage.refusals import CONVERSION_ERRORS
from storage.schemas import parse_timestamps

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy.typing as npt

    from ingest.corrections import TradeKeys
    from storage.schemas import MarketConverter
    from streams.messages import AnyMessage, StockTrade

__all__ = ["Flush", "SymbolBatch", "build_batches"]

TRADES: Final = "trades"
Tables = dict[str, list["AnyMessage"]]


@dataclass(slots=True)
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
    """The records of `tables` the symbol task still hands to the writers: all but the tables
    the router already converted and wrote in bulk. Its own dict (lists are never extended in
    place: `absorb` builds new ones), so the two views cannot double up."""
    keys: TradeKeys | None = None
    """The trades' ids and exchange codes, for a stock symbol's trade memory (else None)."""

    @property
    def count(self) -> int:
        """Records in the batch."""
        return sum(len(rows) for rows in self.tables.values())

    def oldest_recv_ns(self) -> int:
        """When the earliest of these records was received."""
        return min(rows[0].recv_ns for rows in self.tables.values())

    def newest_recv_ns(self) -> int:
        """When the latest of these records was received."""
        return max(rows[-1].recv_ns for rows in self.tables.values())

    def trade_columns(
        self,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(ts, price, size) of the trades, parsing the timestamps here if the flush could not."""
        if self.ts is None:
            self.ts = _epoch_ns(self.tables.get(TRADES, []))
        return self.ts, self.price, self.size

    def absorb(self, later: SymbolBatch) -> None:
        """Append a later batch of the same symbol (a task that fell behind catches up at once)."""
        for view, more in ((self.tables, later.tables), (self.unwritten, later.unwritten)):
            for table, rows in more.items():
                mine = view.get(table)
                view[table] = rows if mine is None else mine + rows
        if self.ts is None or later.ts is None:
            self.ts = None
        else:
            self.ts = np.concatenate((self.ts, later.ts))
        self.price = np.concatenate((self.price, later.price))
        self.size = np.concatenate((self.size, later.size))
        if self.keys is None or later.keys is None:
            self.keys = None
        else:
            self.keys = (
                np.concatenate((self.keys[0], later.keys[0])),
                np.concatenate((self.keys[1], later.keys[1])),
            )


_NO_INTS: Final = np.empty(0, np.int64)


def _epoch_ns(trades: list[AnyMessage]) -> npt.NDArray[np.int64]:
    stamps = [t.t for t in trades]  # type: ignore[union-attr]
    return np.asarray(parse_timestamps(stamps).cast(pa.int64()).to_numpy(), np.int64)


@dataclass(slots=True)
class Flush:
    """A flush's batches per symbol, and the tables converted in bulk for the writers."""

    batches: dict[str, SymbolBatch]
    tables: dict[str, tuple[pa.Table, int]]
    """Table name: (its rows of the whole flush, the oldest receive time among them)."""


def build_batches(
    pending: dict[str, Tables],
    converters: Mapping[str, MarketConverter] | None = None,
    *,
    keyed: bool = False,
) -> Flush:
    """Every symbol's batch of a flush, with one timestamp parse for all the flush's trades.

    Tables with a converter in `converters` are also converted in bulk (see the module's doc).
    `keyed` (stock trades remembered for corrections): the trades' ids and exchange codes are
    gathered once too, for the symbols' trade memories and the bulk `trade_id` column.
    """
    trades = list(itertools.chain.from_iterable(t.get(TRADES, ()) for t in pending.values()))
    ts: npt.NDArray[np.int64] | None = _NO_INTS
    if trades:
        try:
            ts = _epoch_ns(trades)
        except (pa.ArrowInvalid, ValueError):
            ts = None
    price = np.array([t.p for t in trades], np.float64)  # type: ignore[union-attr]
    size = np.array([t.s for t in trades], np.float64)  # type: ignore[union-attr]
    keys = trade_keys(cast("list[StockTrade]", trades)) if keyed and trades else None
    bulk: dict[str, tuple[pa.Table, int]] = {}
    for table, converter in (converters or {}).items():
        if table != TRADES:
            built = _convert_bulk(pending, table, converter, {})
        elif ts is not None:  # else the bulk parse failed: the writer judges trade by trade
            known: dict[str, npt.NDArray[np.int64] | npt.NDArray[np.float64]] = {
                "price": price,
                "size": size,
                "ts": ts,
            }
            if keys is not None:
                known["trade_id"] = keys[0]
            built = _convert_bulk(pending, table, converter, known)
        else:
            continue
        if built is not None:
            bulk[table] = built
    out: dict[str, SymbolBatch] = {}
    start = 0
    for symbol, tables in pending.items():
        part = slice(start, start + len(tables.get(TRADES, ())))
        start = part.stop
        unwritten = {t: rows for t, rows in tables.items() if t not in bulk}
        out[symbol] = SymbolBatch(
            tables,
            None if ts is None else ts[part],
            price[part],
            size[part],
            unwritten,
            None if keys is None else (keys[0][part], keys[1][part]),
        )
    return Flush(out, bulk)


def _convert_bulk(
    pending: dict[str, Tables],
    table: str,
    converter: MarketConverter,
    known: dict[str, npt.NDArray[np.int64] | npt.NDArray[np.float64]],
) -> tuple[pa.Table, int] | None:
    """One table's records of every symbol of the flush as one Arrow table, or None."""
    groups = [(symbol, tables[table]) for symbol, tables in pending.items() if table in tables]
    if not groups:
        return None
    counts = np.fromiter((len(rows) for _, rows in groups), np.int64, len(groups))
    codes = np.repeat(np.arange(len(groups), dtype=np.int32), counts)
    symbols = pa.DictionaryArray.from_arrays(
        codes, pa.array([symbol for symbol, _ in groups], pa.string())
    )
    records = list(itertools.chain.from_iterable(rows for _, rows in groups))
    try:
        converted = converter.with_columns(records, {"symbol": symbols, **known})
    except CONVERSION_ERRORS:
        return None  # the symbol tasks write these records; the writer refuses the bad ones
    return converted, min(rows[0].recv_ns for _, rows in groups)
