"""What a symbol task receives: one symbol's messages of a flush, by table, trades as columns.

The router builds these once per flush for every symbol at the same time, so the work that is
cheap in bulk and dear per call -- parsing the trades' RFC 3339 timestamps, gathering prices and
sizes into arrays -- runs once over thousands of trades rather than once per symbol.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import pyarrow as pa

from storage.schemas import parse_timestamps

if TYPE_CHECKING:
    import numpy.typing as npt

    from streams.messages import AnyMessage

__all__ = ["SymbolBatch", "build_batches"]

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
        for table, rows in later.tables.items():
            mine = self.tables.get(table)
            if mine is None:
                self.tables[table] = rows
            else:
                mine += rows
        if self.ts is None or later.ts is None:
            self.ts = None
        else:
            self.ts = np.concatenate((self.ts, later.ts))
        self.price = np.concatenate((self.price, later.price))
        self.size = np.concatenate((self.size, later.size))


_NO_INTS: Final = np.empty(0, np.int64)


def _epoch_ns(trades: list[AnyMessage]) -> npt.NDArray[np.int64]:
    stamps = [t.t for t in trades]  # type: ignore[union-attr]
    return np.asarray(parse_timestamps(stamps).cast(pa.int64()).to_numpy(), np.int64)


def build_batches(pending: dict[str, Tables]) -> dict[str, SymbolBatch]:
    """Every symbol's batch of a flush, with one timestamp parse for all the flush's trades."""
    trades = list(itertools.chain.from_iterable(t.get(TRADES, ()) for t in pending.values()))
    ts: npt.NDArray[np.int64] | None = _NO_INTS
    if trades:
        try:
            ts = _epoch_ns(trades)
        except (pa.ArrowInvalid, ValueError):
            ts = None
    price = np.array([t.p for t in trades], np.float64)  # type: ignore[union-attr]
    size = np.array([t.s for t in trades], np.float64)  # type: ignore[union-attr]
    out: dict[str, SymbolBatch] = {}
    start = 0
    for symbol, tables in pending.items():
        part = slice(start, start + len(tables.get(TRADES, ())))
        start = part.stop
        out[symbol] = SymbolBatch(tables, None if ts is None else ts[part], price[part], size[part])
    return out
