"""Known content for the fault matrix, and the check that a dataset holds it exactly once.

Timestamps start ten minutes ago, one millisecond apart, so every message lies inside a back-fill
window (`[alpaca] backfill_max_gap` is an hour by default) and none is absurd. Keys are unique per
table (`TableSpec.keys`), so "exactly once" is a comparison of key multisets.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import msgspec
import pyarrow as pa
import pyarrow.dataset as ds

from storage.schemas import table_for, table_spec
from streams.messages import FrameDecoder

if TYPE_CHECKING:
    from pathlib import Path

    from ingest.config import StreamName

__all__ = ["Content", "missing_and_extra"]

Message = dict[str, Any]


def _stamp(ns: int) -> str:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


class Content:
    """Generates messages with increasing times and unique keys, per stream type."""

    def __init__(self, start_ns: int | None = None) -> None:
        self._ns = start_ns or (time.time_ns() - 600 * 1_000_000_000)
        self._id = 1000

    def _next(self) -> str:
        self._ns += 1_000_000
        return _stamp(self._ns)

    def stocks(
        self, n: int, symbols: tuple[str, ...] = ("AAPL", "MSFT"), kinds: int = 3
    ) -> list[Message]:
        """Trades, quotes and minute bars, in turn (`kinds=1`: trades only), over `symbols`."""
        out: list[Message] = []
        for k in range(n):
            symbol = symbols[k % len(symbols)]
            self._id += 1
            kind = k % kinds
            if kind == 0:
                out.append(
                    {
                        "T": "t",
                        "S": symbol,
                        "i": self._id,
                        "x": "V",
                        "p": 100.0 + k / 100,
                        "s": 10 + k,
                        "t": self._next(),
                        "c": ["@"],
                        "z": "C",
                    }
                )
            elif kind == 1:
                out.append(
                    {
                        "T": "q",
                        "S": symbol,
                        "bx": "V",
                        "bp": 99.0 + k / 100,
                        "bs": 1 + k,
                        "ax": "V",
                        "ap": 101.0 + k / 100,
                        "as": 2,
                        "t": self._next(),
                        "c": ["R"],
                        "z": "C",
                    }
                )
            else:
                out.append(
                    {
                        "T": "b",
                        "S": symbol,
                        "o": 100.0,
                        "h": 101.0,
                        "l": 99.0,
                        "c": 100.5,
                        "v": 1000 + k,
                        "n": 10 + k,
                        "vw": 100.2,
                        "t": self._next(),
                    }
                )
        return out

    def crypto(self, n: int, symbols: tuple[str, ...] = ("BTC/USD", "ETH/USD")) -> list[Message]:
        """Trades and quotes, in turn."""
        out: list[Message] = []
        for k in range(n):
            symbol = symbols[k % len(symbols)]
            self._id += 1
            if k % 2 == 0:
                out.append(
                    {
                        "T": "t",
                        "S": symbol,
                        "i": self._id,
                        "p": 60_000.0 + k,
                        "s": 0.01 * (k + 1),
                        "tks": "B",
                        "t": self._next(),
                    }
                )
            else:
                out.append(
                    {
                        "T": "q",
                        "S": symbol,
                        "bp": 59_999.0 + k,
                        "bs": 0.5,
                        "ap": 60_001.0 + k,
                        "as": 0.7 + k,
                        "t": self._next(),
                    }
                )
        return out

    def options(self, n: int, symbol: str = "AAPL240315C00172500") -> list[Message]:
        """Option trades (REST has their history; option quotes it has not)."""
        return [
            {"T": "t", "S": symbol, "p": 2.0 + k / 100, "s": 1 + k, "x": "N", "c": "S"}
            | {"t": self._next()}
            for k in range(n)
        ]

    def news(self, n: int, symbols: tuple[str, ...] = ("AAPL",)) -> list[Message]:
        """Articles with unique ids."""
        out: list[Message] = []
        for _ in range(n):
            self._id += 1
            stamp = self._next()
            out.append(
                {
                    "T": "n",
                    "id": self._id,
                    "headline": f"headline {self._id}",
                    "summary": "",
                    "author": "fake",
                    "created_at": stamp,
                    "updated_at": stamp,
                    "url": "",
                    "content": "",
                    "symbols": list(symbols),
                    "source": "fake",
                }
            )
        return out


def _keys(stream: StreamName, table: str, rows: pa.Table) -> Counter[tuple[Any, ...]]:
    keys = table_spec(stream, table, ()).keys
    columns = []
    for name in keys:
        column = rows[name]
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        columns.append(column.to_pylist())
    return Counter(zip(*columns, strict=True))


def missing_and_extra(
    root: Path, stream: StreamName, sent: list[Message]
) -> dict[str, tuple[int, int, int]]:
    """Per table: (expected rows, missing, extra) comparing the dataset with what was sent."""
    messages = FrameDecoder(stream).decode(msgspec.json.encode(sent), 0).messages
    by_table: dict[str, list[Any]] = {}
    for message in messages:
        table = table_for(stream, type(message))
        if table is not None:
            by_table.setdefault(table, []).append(message)
    report: dict[str, tuple[int, int, int]] = {}
    for table, records in by_table.items():
        want = _keys(stream, table, table_spec(stream, table, ()).to_table(records))
        directory = root / stream / table
        stored: Counter[tuple[Any, ...]] = Counter()
        if directory.is_dir():
            dataset = ds.dataset(directory, format="parquet", partitioning="hive")
            stored = _keys(stream, table, dataset.to_table())
        missing = sum((want - stored).values())
        extra = sum((stored - want).values())
        report[table] = (sum(want.values()), missing, extra)
    return report
