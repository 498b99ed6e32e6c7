"""A flush's rows of one market table as the router gathered them, for the writer to convert.

The router gathers the columns of a flush's market records once, in bulk (symbols, receive
times, the trades' times, prices, sizes and ids: `ingest.batch`). Converting them to Arrow there,
one table a flush, cost ~0.15 ms of a paced 200-trade flush, most of it fixed (~10 Arrow calls
for the columns still gathered from the records), and made a table of a few hundred rows that a
seal then concatenated with ~1,250 others and freed one by one. The writer now joins `BulkRows`
until it holds `BULK_ROWS` of them and converts those in one go
(`storage.parquet.TableWriter.put_bulk`): ~0.07 ms a flush.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from collections.abc import Sequence

    from storage.schemas import MarketConverter

__all__ = ["BULK_ROWS", "BulkRows"]

BULK_ROWS: Final = 1024
"""Rows a writer joins before converting them: the fixed cost shared by ~6 paced flushes at
100k trades/s, for one conversion of ~0.4 ms on the loop (the cost a row sets the rest)."""


@dataclass(frozen=True, slots=True)
class BulkRows:
    """Records of one table, and the columns already known of them (`MarketConverter`)."""

    records: list[Any]
    known: dict[str, Any]
    """Column name: its values for every record, a numpy array or an Arrow array."""
    oldest_ns: int
    """The oldest receive time among the records."""

    def __len__(self) -> int:
        return len(self.records)

    @classmethod
    def joined(cls, parts: Sequence[BulkRows]) -> BulkRows:
        """One `BulkRows` of `parts`, in order; every part knows the same columns."""
        if len(parts) == 1:
            return parts[0]
        known = {
            name: _concatenated([part.known[name] for part in parts]) for name in parts[0].known
        }
        records = list(itertools.chain.from_iterable(part.records for part in parts))
        return cls(records, known, min(part.oldest_ns for part in parts))

    def to_table(self, converter: MarketConverter) -> pa.Table:
        """The Arrow table of these rows; raises as the converter does on a bad record."""
        return converter.with_columns(self.records, self.known)


def _concatenated(columns: list[Any]) -> Any:
    if isinstance(columns[0], pa.Array):
        return pa.concat_arrays(columns)  # dictionaries (the symbols) are unified
    return np.concatenate(columns)
