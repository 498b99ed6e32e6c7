"""Records a table cannot hold are split off, so one bad record never sinks a whole buffer.

A writer converts its whole buffer to Arrow at once. If that fails (a timestamp the screen could
not catch cheaply, say), the buffer is bisected until every refused record is isolated: the rest is
written as usual and the refused ones are handed back, with the error, for quarantine. The cost
is a few extra conversions, and only when a conversion failed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa

if TYPE_CHECKING:
    from collections.abc import Sequence

    from storage.schemas import TableSpec

__all__ = ["CONVERSION_ERRORS", "Refused", "convert_or_refuse"]

CONVERSION_ERRORS: Final = (pa.ArrowException, ValueError, TypeError, OverflowError)

Refused = list[tuple[Any, str]]
"""(record, why its conversion failed) for each record a table refused."""


def convert_or_refuse(spec: TableSpec, records: Sequence[Any]) -> tuple[pa.Table | None, Refused]:
    """The table of every convertible record (None if none is), and the refused ones."""
    tables: list[pa.Table] = []
    refused: Refused = []
    _bisect(spec, records, tables, refused)
    if not tables:
        return None, refused
    return (tables[0] if len(tables) == 1 else pa.concat_tables(tables)), refused


def _bisect(
    spec: TableSpec, records: Sequence[Any], tables: list[pa.Table], refused: Refused
) -> None:
    try:
        tables.append(spec.to_table(records))
    except CONVERSION_ERRORS as exc:
        if len(records) == 1:
            refused.append((records[0], f"{type(exc).__name__}: {exc}"))
            return
        middle = len(records) // 2
        _bisect(spec, records[:middle], tables, refused)
        _bisect(spec, records[middle:], tables, refused)
