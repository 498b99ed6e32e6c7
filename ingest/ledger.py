"""What the daemon holds, per stream, table and symbol: the seam a gap back-fill works against.

A back-fill (`streams.alpaca.backfill`) asks three things, and this is where they are answered:

* where a symbol's gap starts: the newest event time taken for it in this process (the router
  keeps it per symbol and table, as text), else the newest one persisted by an earlier run
  (read once at start, after journal recovery, from the rows within `backfill_max_gap`: a
  symbol with nothing persisted that recently has no gap to fill);
* when everything received before the reconnect has reached the writers (`settle`), so those
  rows are where the overlap check can see them;
* which REST rows of the gap are new (`overlap_check`): rows outside `[start, end]` are dropped,
  and rows inside are checked by key (`TableSpec.keys`, through `storage.dedup.DedupFilter`)
  against every row held from the gap's start on (writer buffers and Parquet) and the live rows
  that arrived since the reconnect. Its horizon is unbounded, so an old gap is checked, never
  taken for stored. The start only has to be a lower bound (the router keeps the stamp of each
  batch's last row, not the maximum): rows held after it are recognised by key.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Final

import anyio
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import structlog

from storage.dedup import DedupFilter
from storage.refusals import CONVERSION_ERRORS
from storage.schemas import TIMESTAMP, stamp_ns, table_for, table_spec

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from ingest.config import Settings, StreamName
    from ingest.intake import StreamIntake
    from ingest.router import StreamRouter
    from storage.parquet import Dataset
    from storage.schemas import TableSpec
    from streams.messages import AnyMessage

__all__ = ["BACKFILL_TABLES", "DaemonLedger"]

log = structlog.get_logger("ledger")

BACKFILL_TABLES: Final = ("trades", "quotes", "vendor_bars", "articles")
"""The tables a back-fill writes (REST history has nothing else)."""
ANY: Final = "*"
"""The symbol key of tables without a symbol column (news articles)."""
SETTLE_POLL: Final = 0.02
SETTLE_LIMIT: Final = 30.0
_UNBOUNDED_HORIZON: Final = 10.0**9
"""Seconds: the overlap check never takes an old row for stored without looking at its keys."""


class DaemonLedger:
    """The daemon's `streams.base.Ledger`: routers, intakes, writers and the dataset."""

    def __init__(
        self,
        settings: Settings,
        routers: Mapping[StreamName, StreamRouter],
        intakes: Mapping[StreamName, StreamIntake],
        dataset: Dataset,
        indicator_columns: Sequence[str],
    ) -> None:
        self._settings = settings
        self._routers = routers
        self._intakes = intakes
        self._dataset = dataset
        self._indicators = tuple(indicator_columns)
        self._persisted: dict[tuple[StreamName, str], dict[str, int]] = {}

    # --- seeding (blocking: run in a worker thread at start) -----------------------------------

    def seed(self, root: Path, streams: Sequence[StreamName], max_gap_seconds: float) -> None:
        """Learn each symbol's newest persisted event time, within `max_gap_seconds` of now.

        Older rows cannot start a gap (it would be cut to the limit anyway), and the filter lets
        Parquet skip every file and row group wholly before it: a start reads little.
        """
        floor_ns = time.time_ns() - int((max_gap_seconds + 60) * 1e9)
        for stream in streams:
            for table in BACKFILL_TABLES:
                if table_for_stream(stream, table) is None:
                    continue
                spec = table_spec(stream, table, self._indicators)
                newest = _newest_per_symbol(root / stream / table, spec, floor_ns)
                if newest:
                    self._persisted[(stream, table)] = newest
                    log.debug("ledger_seeded", stream=stream, table=table, symbols=len(newest))

    # --- the Ledger protocol -------------------------------------------------------------------

    def last_seen(self, stream: StreamName, table: str, symbol: str | None) -> int | None:
        """Newest event time of `table` rows for `symbol` (None: any symbol), or None."""
        found: list[int] = []
        persisted = self._persisted.get((stream, table), {})
        router = self._routers.get(stream)
        states = router.symbols.items() if router is not None else ()
        stamps = [
            stamp
            for name, state in states
            if (symbol is None or table == "articles" or name == symbol)
            and (stamp := state.seen.get(table)) is not None
        ]
        # Nanoseconds as they are; text sorts like time, so only the newest text is parsed.
        nanos = [s for s in stamps if isinstance(s, int)]
        texts = [s for s in stamps if isinstance(s, str)]
        if nanos:
            found.append(max(nanos))
        if texts and (newest := stamp_ns(max(texts))) is not None:
            found.append(newest)
        if symbol is None or table == "articles":
            found += persisted.values()
        elif symbol in persisted:
            found.append(persisted[symbol])
        return max(found) if found else None

    def known_symbols(self, stream: StreamName, table: str) -> list[str]:
        """Symbols with rows of `table`, in this process or persisted."""
        names = set(self._persisted.get((stream, table), {}))
        router = self._routers.get(stream)
        if router is not None:
            names.update(name for name, state in router.symbols.items() if table in state.seen)
        names.discard(ANY)
        return sorted(names)

    async def settle(self, stream: StreamName, before_ns: int) -> None:
        """Wait (polling, bounded: this is rare) until frames older than `before_ns` are in."""
        router, intake = self._routers.get(stream), self._intakes.get(stream)
        with anyio.move_on_after(SETTLE_LIMIT):
            while True:
                oldest = [
                    ns
                    for ns in (
                        intake.oldest_ns() if intake is not None else None,
                        router.oldest_inflight_ns() if router is not None else None,
                    )
                    if ns is not None
                ]
                if not oldest or min(oldest) >= before_ns:
                    return
                await anyio.sleep(SETTLE_POLL)

    async def overlap_check(
        self, stream: StreamName, starts: Mapping[tuple[str, str], int], end_ns: int
    ) -> GapCheck:
        """A `GapCheck` that already knows the rows held at each start."""
        check = GapCheck(stream, starts, end_ns, self._indicators)
        by_table: dict[str, dict[str, int]] = defaultdict(dict)
        for (table, symbol), start in starts.items():
            by_table[table][symbol] = start
        for table, wanted in by_table.items():
            spec = table_spec(stream, table, self._indicators)
            writer = self._dataset.writers.get((stream, table))
            if writer is not None:  # before the files: a row sealed meanwhile is in one or both
                buffered = writer.buffered_records()
                if buffered:
                    check.remember_rows(table, _from_starts(_convert(spec, buffered), spec, wanted))
                for part in [*writer.buffered_tables(), *writer.retry_parts()]:
                    check.remember_rows(table, _from_starts(part, spec, wanted))
            directory = self._settings.ingest.data_dir / stream / table
            stored = await anyio.to_thread.run_sync(_stored_from, directory, spec, wanted)
            check.remember_rows(table, stored)
        return check


def table_for_stream(stream: StreamName, table: str) -> str | None:
    """`table` if `stream` writes it (articles: news only; the rest: not news)."""
    if stream == "news":
        return table if table == "articles" else None
    if table == "articles" or (stream == "options" and table == "vendor_bars"):
        return None
    return table


class GapCheck:
    """One gap's `OverlapCheck`: trims to `[start, end]` and checks keys inside it."""

    def __init__(
        self,
        stream: StreamName,
        starts: Mapping[tuple[str, str], int],
        end_ns: int,
        indicator_columns: Sequence[str],
    ) -> None:
        self.stream = stream
        self._starts = dict(starts)
        self._end = end_ns
        self._indicators = tuple(indicator_columns)
        self._filter = DedupFilter(_UNBOUNDED_HORIZON, indicator_columns)
        self._tables: dict[type, str | None] = {}

    def remember(self, messages: Sequence[AnyMessage]) -> None:
        """Live messages: a REST copy of any of them is not written again."""
        for table, group in self._group(messages).items():
            spec = table_spec(self.stream, table, self._indicators)
            self.remember_rows(table, _convert(spec, group))

    def remember_rows(self, table: str, rows: pa.Table | None) -> None:
        """Rows (of the table's schema) the dataset holds."""
        if rows is not None and rows.num_rows:
            self._filter.remember(self.stream, table, rows)

    def admit(self, messages: Sequence[AnyMessage]) -> list[AnyMessage]:
        """The messages inside the gap whose keys are not held; they are held from now on."""
        keep: list[AnyMessage] = []
        for table, group in self._group(messages).items():
            if table not in BACKFILL_TABLES:
                continue
            spec = table_spec(self.stream, table, self._indicators)
            rows = _convert(spec, group)
            if rows is None:
                keep += group  # unconvertible: the writer refuses and quarantines them
                continue
            inside = self._inside(table, spec, rows)
            mask = np.zeros(len(group), dtype=bool)
            chosen = np.flatnonzero(inside)
            if len(chosen):
                mask[chosen] = self._filter.admit(self.stream, table, rows.take(chosen))
            keep += [m for m, ok in zip(group, mask.tolist(), strict=True) if ok]
        return keep

    def _inside(self, table: str, spec: TableSpec, rows: pa.Table) -> np.ndarray[Any, Any]:
        times = rows[spec.time_column].cast(pa.int64()).to_numpy()
        symbols: list[str | None] = (
            rows["symbol"].cast(pa.string()).to_pylist()
            if "symbol" in rows.column_names
            else [ANY] * rows.num_rows
        )
        never = 2**62  # a symbol without a start has no gap: nothing of it is inside
        starts = np.array(
            [self._starts.get((table, s), never) if s else never for s in symbols], dtype=np.int64
        )
        inside: np.ndarray[Any, Any] = (times >= starts) & (times <= self._end)
        return inside

    def _group(self, messages: Sequence[AnyMessage]) -> dict[str, list[AnyMessage]]:
        groups: dict[str, list[AnyMessage]] = {}
        for message in messages:
            kind = type(message)
            if kind not in self._tables:
                self._tables[kind] = table_for(self.stream, kind)
            table = self._tables[kind]
            if table is not None:
                groups.setdefault(table, []).append(message)
        return groups


def _convert(spec: TableSpec, records: Sequence[Any]) -> pa.Table | None:
    try:
        return spec.to_table(records)
    except CONVERSION_ERRORS:
        return None


def _from_starts(
    rows: pa.Table | None, spec: TableSpec, wanted: Mapping[str, int]
) -> pa.Table | None:
    """The rows at or after their symbol's gap start (symbols without a gap: none)."""
    if rows is None or not rows.num_rows:
        return None
    times = rows[spec.time_column].cast(pa.int64()).to_pylist()
    if "symbol" in rows.column_names:
        symbols = rows["symbol"].cast(pa.string()).to_pylist()
    else:
        symbols = [ANY] * rows.num_rows
    never = 2**62
    hits = [
        i
        for i, (s, t) in enumerate(zip(symbols, times, strict=True))
        if s is not None and t is not None and t >= wanted.get(s, never)
    ]
    return rows.take(hits) if hits else None


def _stored_from(directory: Path, spec: TableSpec, wanted: Mapping[str, int]) -> pa.Table | None:
    """Persisted rows at or after their gap start, from the partitions that may hold them."""
    first = min(wanted.values())
    first_day = time.strftime("%Y-%m-%d", time.gmtime(first // 1_000_000_000))
    floor = pa.scalar(first, pa.int64()).cast(TIMESTAMP)
    columns = list(dict.fromkeys([*spec.keys, spec.watermark_column, spec.time_column]))
    found: list[pa.Table] = []
    partitions = sorted(p for p in directory.glob("date=*") if p.name[5:] >= first_day)
    for partition in partitions:
        for path in sorted(partition.glob("*.parquet")):
            try:  # the filter lets Parquet skip files and row groups wholly before the gap
                rows = pq.read_table(
                    path, columns=columns, filters=pc.field(spec.time_column) >= floor
                )
            except (OSError, pa.ArrowException):
                continue  # compacted away meanwhile: its rows are in the new file
            picked = _from_starts(rows, spec, wanted)
            if picked is not None:
                found.append(picked)
    if not found:
        return None
    return pa.concat_tables(found, promote_options="permissive")


def _newest_per_symbol(directory: Path, spec: TableSpec, floor_ns: int) -> dict[str, int]:
    """Newest event time per symbol among rows at or after `floor_ns` (blocking)."""
    if not directory.is_dir():
        return {}
    newest: dict[str, int] = {}
    first_day = time.strftime("%Y-%m-%d", time.gmtime(floor_ns // 1_000_000_000))
    floor = pa.scalar(floor_ns, pa.int64()).cast(TIMESTAMP)
    partitions = sorted(p for p in directory.glob("date=*") if p.name[5:] >= first_day)
    for partition in partitions:
        for path in sorted(partition.glob("*.parquet")):
            has_symbol = "symbol" in spec.schema.names
            columns = ["symbol", spec.time_column] if has_symbol else [spec.time_column]
            try:
                rows = pq.read_table(
                    path, columns=columns, filters=pc.field(spec.time_column) >= floor
                )
            except (OSError, pa.ArrowException):
                continue
            if not rows.num_rows:
                continue
            if not has_symbol:
                top = pc.max(rows[spec.time_column].cast(pa.int64())).as_py()
                if top is not None:
                    newest[ANY] = max(newest.get(ANY, top), top)
                continue
            rows = rows.set_column(0, "symbol", rows["symbol"].cast(pa.string()))
            grouped = rows.group_by("symbol").aggregate([(spec.time_column, "max")])
            times = grouped[f"{spec.time_column}_max"].cast(pa.int64()).to_pylist()
            for symbol, value in zip(grouped["symbol"].to_pylist(), times, strict=True):
                if symbol is not None and value is not None:
                    newest[symbol] = max(newest.get(symbol, value), value)
    return newest
