"""Parquet output: one writer per table per process, files that appear only by rename.

Layout: `<data_dir>/<stream>/<table>/date=YYYY-MM-DD/part-<first ts>-<writer id>-<seq>.parquet`,
hive-partitioned by the UTC date of the table's time column, rows sorted by (symbol, ts). A file is
written under a hidden temporary name, fsynced, renamed into place and its directory fsynced, so a
reader never sees a partial file and a crash never leaves one. The writer id (shard, start time,
pid, random) keeps names distinct across restarts and shards writing to one dataset.

A failed seal (disk full, unwritable directory) is counted and retried with back-off; the date
partitions already written are not written again, so per (symbol, date) the sealed rows are always
a prefix of the rows put, in order (crash recovery relies on it, see `storage.recovery`). Each
writer reports the receive time of the oldest row it has not sealed, so the journal knows which
segments Parquet covers.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast

import anyio
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import structlog

from ingest.errors import StorageError
from ingest.metrics import Metrics
from storage.atomic import fsync_dir, table_lock
from storage.bulk import BULK_ROWS, BulkRows
from storage.refusals import CONVERSION_ERRORS, Refused, convert_or_refuse
from storage.schemas import SYMBOL, MarketConverter, TableSpec, table_spec

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable
    from pathlib import Path

    import numpy.typing as npt

    from ingest.config import StorageSettings, StreamName

__all__ = [
    "Admission",
    "Dataset",
    "TableWriter",
    "WriterStats",
    "make_writer_id",
    "open_dataset",
    "writer_prefix",
]

log = structlog.get_logger("storage")

_DAY_NS: Final = 86_400 * 1_000_000_000
SEAL_GRACE_SECONDS: Final = 30.0
"""How long shutdown may spend sealing open buffers; systemd's TimeoutStopSec sits above it."""
ZSTD_LEVEL: Final = 5
"""Measured on 1M trades: 8.2 bytes a row at level 3, 7.4 at 5, no better above; level 5 still
encodes about 5M rows/s."""
ZSTD_DELTA_LEVEL: Final = 15
"""For delta-encoded columns (event times, ids) and `recv_ts`: bit-packed deltas and dictionary
indices are few bytes a row and not byte-aligned, where zstd's optimal parser (level 14 and up on
pages of at most 256 KiB) finds what level 5 misses. `ts` 2.73 -> 2.53 bytes a trade at the
default pages, 2.32 on `PAGE_BYTES` pages; `recv_ts` 1.70 -> 1.64."""
PAGE_BYTES: Final = 250_000
"""Target encoded size of a data page, each page being compressed on its own. zstd picks its
parameters by input size: up to 256 KiB, level 15 is the optimal parser with 3-byte matches,
above it a lazy matcher (`ts` 2.32 bytes a trade on 250 kB pages, 2.73 on 500 kB ones). Pages
are cut between batches of 1,024 rows, so a page of 8-byte values ends below 258 kB, under the
bound. Arrow's default (1 MB, at most 20,000 rows) gives 80 kB `ts` pages: 2.53."""
PAGE_ROWS: Final = 1 << 20
"""No row bound on a page (Arrow's default is 20,000): `PAGE_BYTES` sizes pages."""
RETRY_FIRST_SECONDS: Final = 0.1
RETRY_MAX_SECONDS: Final = 5.0
RECV_TS: Final = "recv_ts"
COMPACT_ROWS: Final = 128
"""Buffered records are converted to Arrow every this many: a bar's dict row holds ~1.3 KB of
Python objects against ~190 bytes as Arrow, and a table buffers up to `roll_seconds` of them.
The conversion holds the event loop (~5 us a bar row in a loaded daemon): 1,024 rows at a time
stopped it for 5-8 ms, the p99 of a paced run; 128 costs as much memory and ~1 ms a stop."""

Admission = Callable[[Sequence[Any]], Sequence[Any]]
"""Decides which records of a `put` are written (crash recovery drops rows already sealed)."""


def writer_prefix(shard: tuple[int, int] = (0, 1)) -> str:
    """How every writer id of a shard begins (recovery takes only its own shard's journal)."""
    return f"s{shard[0]}of{shard[1]}-"


def make_writer_id(shard: tuple[int, int] = (0, 1)) -> str:
    """A name part unique to this process: shard, start time, pid and a random suffix."""
    started = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{writer_prefix(shard)}{started}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(slots=True)
class WriterStats:
    """What one table writer has done."""

    rows: int = 0
    files: int = 0
    last_seal_ns: int = 0


def column_encodings(schema: pa.Schema) -> tuple[list[str], list[str]]:
    """(dictionary-encoded columns, delta-encoded columns) for a table.

    Sorted by (symbol, ts), neighbouring values differ by little: integers and event times are
    delta-encoded, so timestamps and trade ids shrink to a byte or two. Prices are left plain:
    zstd finds a price's repeats and shared high bytes by itself, and dictionary indices cost
    more (1.95 against 1.58 bytes a trade on the benchmark, 2.6 against 2.1 on real BTC trades).
    `recv_ts` is dictionary-encoded: a frame's rows share it, and in (symbol, ts) order those
    rows are far apart, which defeats deltas (2.8 against 1.7 bytes). Everything else (strings,
    symbols, sizes) repeats a lot and is dictionary-encoded. Parquet falls back to plain pages by
    itself where a dictionary grows too large to pay.
    """
    dictionary: list[str] = []
    delta: list[str] = []
    for f in schema:
        if f.name == RECV_TS:
            dictionary.append(f.name)
        elif (
            pa.types.is_integer(f.type)
            or pa.types.is_timestamp(f.type)
            or pa.types.is_date32(f.type)
        ):
            delta.append(f.name)
        elif not pa.types.is_boolean(f.type) and not _is_price(f.name):
            dictionary.append(f.name)
    return dictionary, delta


def _levels(schema: pa.Schema, delta: list[str]) -> dict[str, int]:
    """The zstd level of every column (`ZSTD_DELTA_LEVEL` for delta-encoded ones and `recv_ts`).

    Prices and sizes stay at `ZSTD_LEVEL`: level 15 costs prices over 100 ms a 256k-row file for
    0.07 bytes a trade, and random sizes' dictionary indices do not compress at any level.
    """
    return {
        f.name: ZSTD_DELTA_LEVEL if f.name in delta or f.name == RECV_TS else ZSTD_LEVEL
        for f in schema
    }


def _is_price(name: str) -> bool:
    return name == "price" or name.endswith("_price")


def write_parquet_atomically(
    table: pa.Table, directory: Path, name: str, *, compression: str, fsync: bool
) -> None:
    """Write `table` as `directory/name` via a temporary file and a rename."""
    final = directory / name
    temporary = directory / f".{name}.tmp"
    try:
        dictionary, delta = column_encodings(table.schema)
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            table,
            temporary,
            compression=cast("Any", None if compression == "none" else compression),
            compression_level=_levels(table.schema, delta) if compression == "zstd" else None,
            use_dictionary=cast("Any", dictionary),  # the stubs say bool; a list of names works
            column_encoding=dict.fromkeys(delta, "DELTA_BINARY_PACKED"),
            write_statistics=True,
            row_group_size=1_000_000,
            data_page_size=PAGE_BYTES,
            max_rows_per_page=PAGE_ROWS,
        )
        if fsync:
            fd = os.open(temporary, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(temporary, final)
        if fsync:
            fsync_dir(directory)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        msg = f"cannot write {str(final)!r}: {exc.strerror or exc}"
        raise StorageError(msg) from exc


def prepare(table: pa.Table, spec: TableSpec) -> pa.Table:
    """Sort a table for writing and give `symbol` its dictionary type."""
    if spec.sort_by == ("symbol", "ts") and table.num_rows:
        return _by_symbol_and_time(table)
    if "symbol" in table.column_names and pa.types.is_dictionary(table.schema.field("symbol").type):
        table = table.set_column(
            table.schema.get_field_index("symbol"), "symbol", table["symbol"].cast(pa.string())
        )
    table = table.sort_by([(key, "ascending") for key in spec.sort_by])
    if "symbol" in table.column_names:
        index = table.schema.get_field_index("symbol")
        table = table.set_column(index, pa.field("symbol", SYMBOL), table["symbol"].cast(SYMBOL))
    return table


def _by_symbol_and_time(table: pa.Table) -> pa.Table:
    """Sorted by (symbol, ts), symbol as one dictionary: a numpy lexsort over integer keys.

    Twice as fast as Arrow's sort on the symbol text: symbols become their rank among the
    distinct symbols, so the sort compares integers only. Stable: equal keys keep their order.
    """
    index = table.schema.get_field_index("symbol")
    column = table["symbol"].combine_chunks()
    symbols = cast(
        "pa.DictionaryArray[Any, Any]",
        column if pa.types.is_dictionary(column.type) else column.dictionary_encode(),
    )
    words = symbols.dictionary.to_numpy(zero_copy_only=False)
    rank = np.empty(len(words), np.int64)
    rank[np.argsort(words, kind="stable")] = np.arange(len(words))
    codes = rank[symbols.indices.to_numpy(zero_copy_only=False)]
    times = table["ts"].combine_chunks().cast(pa.int64()).to_numpy(zero_copy_only=False)
    order = np.lexsort((times, codes))
    table = table.set_column(index, pa.field("symbol", SYMBOL), symbols.cast(SYMBOL))
    return table.take(order)


def split_by_date(table: pa.Table, time_column: str) -> list[tuple[str, pa.Table]]:
    """(`YYYY-MM-DD`, rows of that UTC date) for every date present."""
    days = pc.divide(table[time_column].cast(pa.int64()), _DAY_NS)
    unique = sorted(int(day) for day in pc.unique(days).to_pylist() if day is not None)
    if len(unique) == 1:
        return [(_date(unique[0]), table)]
    return [(_date(day), table.filter(pc.equal(days, pa.scalar(day)))) for day in unique]


def _check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"data directory {str(root)!r} cannot be created: {exc.strerror or exc}"
        raise StorageError(msg) from exc
    if not os.access(root, os.W_OK):
        msg = f"data directory {str(root)!r} is not writable"
        raise StorageError(msg)


def _date(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))


RELEASE_STEP = 4
"""Tables a seal lets go of at a time (`_release`): ~0.15 ms of the GIL at 100k trades/s."""
RELEASE_PAUSE = 0.001
"""Seconds between two steps of `_release`, the GIL left to the event loop."""


_pause: Callable[[float], None] = time.sleep
"""Hands the GIL over for that long (`_release`)."""


def _release(tables: list[pa.Table], closing: Callable[[], bool]) -> None:
    """Let go of the tables a seal wrote, here in the writer's thread, a few at a time.

    A trades seal holds a table of every flush (~600 at 100k trades/s), and freeing them holds
    the GIL for ~10 us each (~40 us in the daemon's cold caches): at once, on the event loop or
    here, the loop stopped for 20-35 ms. A few at a time with a pause between, the loop loses a
    fraction of a millisecond now and then while the last seal's tables go.
    """
    while tables:
        del tables[-RELEASE_STEP:]
        _pause(0.0 if closing() else RELEASE_PAUSE)  # stopping: no pause keeps exit waiting


@dataclass(slots=True)
class _Sealed:
    """What one seal attempt did: rows written (and their receive times), parts left to retry."""

    rows: int = 0
    recv_ns: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.intp]]] = field(default_factory=list)
    """Per file: the distinct receive times of its rows, and how many rows had each."""
    remaining: list[tuple[str, pa.Table]] = field(default_factory=list)
    remaining_oldest: int | None = None
    error: str = ""
    refused: Refused = field(default_factory=list)
    """Records the table could not convert, for the quarantine."""


def _recv_of(record: Any) -> int:
    return int(record["recv_ts"] if isinstance(record, dict) else record.recv_ns)


class TableWriter:
    """Buffers one table's records and seals them into Parquet files by rows or by seconds."""

    def __init__(
        self,
        root: Path,
        stream: StreamName,
        spec: TableSpec,
        settings: StorageSettings,
        *,
        writer_id: str,
        metadata: dict[str, str],
        metrics: Metrics,
        on_sealed: Callable[[StreamName], None] | None = None,
        on_refused: Callable[[StreamName, str, Refused], Awaitable[None]] | None = None,
        before_seal: Callable[[StreamName], Awaitable[None]] | None = None,
    ) -> None:
        """`before_seal` is awaited once a seal has taken its rows, before they are written."""
        self.stream = stream
        self._on_refused = on_refused
        self._before_seal = before_seal
        self._metrics = metrics
        self.spec = spec
        self.stats = WriterStats()
        self.admit: Admission | None = None
        self._directory = root / stream / spec.name
        self._settings = settings
        self._writer_id = writer_id
        self._metadata = {k.encode(): v.encode() for k, v in metadata.items()}
        self._on_sealed = on_sealed
        self._buffer: list[Any] = []
        self._tables: list[pa.Table] = []
        """Rows put as tables (`put_table`, `put_bulk` once converted), waiting with `_buffer`."""
        self._table_rows = 0
        self._bulk: list[BulkRows] = []
        """Rows the router gathered in bulk (`put_bulk`), until `BULK_ROWS` are converted."""
        self._bulk_rows = 0
        self._refused: Refused = []
        """Records a compaction of the buffer could not convert, for the next seal to report."""
        self._sealing: list[Any] = []
        self._sealing_tables: list[pa.Table] = []
        self._retry: list[tuple[str, pa.Table]] = []
        self._oldest: dict[str, int | None] = {"buffer": None, "sealing": None, "retry": None}
        self._seq = 0
        self._full = anyio.Event()
        self._stop = anyio.Event()
        self._drained = anyio.Event()
        self._seal_lock = anyio.Lock()
        self._closing = False
        self._high_water = max(4 * settings.roll_rows, 10_000)

    def buffered_records(self) -> list[Any]:
        """A copy of the records put and not yet in a file: buffered, or in a seal under way.

        A back-fill's overlap check reads this before the table's files, so a row moving from
        here into a file meanwhile is seen in one place or the other, never in neither.
        """
        return [*self._sealing, *self._buffer]

    def buffered_tables(self) -> list[pa.Table]:
        """Like `buffered_records`, for the rows put as tables or in bulk (converted now)."""
        self._convert_bulk()
        return [*self._sealing_tables, *self._tables]

    def retry_parts(self) -> list[pa.Table]:
        """Converted parts a failed seal left to retry (also in no file yet)."""
        return [part for _, part in self._retry]

    @property
    def buffered_rows(self) -> int:
        """Rows put but not yet handed to a seal (bounded by the high-water mark)."""
        return len(self._buffer) + self._table_rows + self._bulk_rows

    @property
    def oldest_unsealed_ns(self) -> int | None:
        """Receive time of the oldest row put but not yet durably sealed; `None` if none."""
        return min((ns for ns in self._oldest.values() if ns is not None), default=None)

    async def put(self, records: Sequence[Any]) -> None:
        """Buffer records; waits while the buffer is over its bound (slow disk backpressure)."""
        if self.admit is not None:
            records = self.admit(records)
        if not records:
            return
        await self._room()
        self._took(_recv_of(records[0]))
        self._buffer.extend(records)
        if len(self._buffer) >= COMPACT_ROWS:
            self._compact_buffer()
        self._filled()

    def _compact_buffer(self) -> None:
        """Hold the buffered records as an Arrow table (a fraction of their memory)."""
        records, self._buffer = self._buffer, []
        table, refused = convert_or_refuse(self.spec, records)
        self._refused += refused
        if table is not None:
            self._hold(table)

    def _hold(self, table: pa.Table) -> None:
        """Keep converted rows until the next seal."""
        self._tables.append(table)
        self._table_rows += table.num_rows

    async def put_table(self, table: pa.Table, oldest_recv_ns: int) -> None:
        """Buffer rows already converted (of this table's schema); waits like `put`.

        For writers without an admission filter only (`takes_tables`): a filter judges records.
        """
        done = 0
        while done < table.num_rows:  # in slices that fit: the buffer never passes its bound
            await self._room()
            room = table.num_rows if self._closing else self._high_water - self.buffered_rows
            part = table.slice(done, max(room, 1))
            done += part.num_rows
            self._took(oldest_recv_ns)
            self._hold(part)
            self._filled()

    async def put_bulk(self, rows: BulkRows) -> None:
        """Buffer a flush's rows as gathered in bulk; waits like `put`.

        Converted `BULK_ROWS` at a time (`storage.bulk`), or at the next seal. For writers of a
        market table (`MarketConverter`) that take tables (`takes_tables`) only.
        """
        if not rows:
            return
        await self._room()
        self._took(rows.oldest_ns)
        self._bulk.append(rows)
        self._bulk_rows += len(rows)
        if self._bulk_rows >= BULK_ROWS:
            self._convert_bulk()
        self._filled()

    def _convert_bulk(self) -> None:
        """Convert the rows put in bulk; should some record not convert, all go record by record.

        Record by record (`_compact_buffer`), the bad ones are refused and the rest kept.
        """
        if not self._bulk:
            return
        rows = BulkRows.joined(self._bulk)
        self._bulk, self._bulk_rows = [], 0
        try:
            table = rows.to_table(cast("MarketConverter", self.spec.to_table))
        except CONVERSION_ERRORS:
            self._buffer.extend(rows.records)
            self._compact_buffer()
            return
        self._hold(table)

    @property
    def takes_tables(self) -> bool:
        """Whether `put_table` and `put_bulk` may be used: no admission filter (recovery's) set."""
        return self.admit is None

    async def _room(self) -> None:
        while self.buffered_rows >= self._high_water and not self._closing:
            await self._drained.wait()

    def _took(self, recv_ns: int) -> None:
        oldest = self._oldest["buffer"]
        self._oldest["buffer"] = recv_ns if oldest is None else min(oldest, recv_ns)

    def _filled(self) -> None:
        if self.buffered_rows >= self._settings.roll_rows:
            self._full.set()

    def close(self) -> None:
        """Ask `run` to seal what is buffered and return."""
        self._closing = True
        self._full.set()
        self._stop.set()

    async def run(self) -> None:
        """Seal files when the buffer fills or every `roll_seconds`, until closed.

        After a failed seal the next attempt waits a back-off (doubling, capped at
        `roll_seconds`), however full the buffer is; producers block on the bound meanwhile.
        """
        structlog.contextvars.clear_contextvars()  # started from whichever symbol wrote first
        failures = 0
        try:
            while not self._closing:
                if failures:
                    with anyio.move_on_after(self._backoff(failures)):
                        await self._stop.wait()
                else:
                    with anyio.move_on_after(self._settings.roll_seconds):
                        await self._full.wait()
                self._full = anyio.Event()
                failures = 0 if await self.seal() else failures + 1
        finally:
            with anyio.move_on_after(SEAL_GRACE_SECONDS, shield=True):
                attempt = 0
                while not await self.seal():
                    attempt += 1
                    await anyio.sleep(self._backoff(attempt))

    def _backoff(self, failures: int) -> float:
        limit = min(RETRY_MAX_SECONDS, self._settings.roll_seconds)
        return float(min(RETRY_FIRST_SECONDS * 2.0 ** (failures - 1), limit))

    async def seal(self) -> bool:
        """Write what is buffered (in a worker thread); wake blocked producers. True if all done.

        Parts left over from a failed seal go first; new rows wait until they are written, so
        rows of one symbol and date are sealed in the order they were put.
        """
        async with self._seal_lock:
            if self._retry:
                done = self._account(await anyio.to_thread.run_sync(self._write_parts, self._retry))
                if not done:
                    return False
            self._convert_bulk()
            if not self._buffer and not self._tables and not self._refused:
                return True
            refused, self._refused = self._refused, []
            records, self._buffer = self._buffer, []
            tables, self._tables, self._table_rows = self._tables, [], 0
            self._sealing, self._sealing_tables = records, tables
            self._oldest["sealing"], self._oldest["buffer"] = self._oldest["buffer"], None
            if self._before_seal is not None:
                await self._before_seal(self.stream)  # the journal catches up with these rows
            # Should converting raise (a bug), "sealing" stays set: the journal keeps the frames.
            result = await anyio.to_thread.run_sync(self._write, records, tables)
            self._oldest["sealing"] = None
            self._sealing, self._sealing_tables = [], []
            result.refused = refused + result.refused
            if result.refused:
                log.warning(
                    "records_refused",
                    stream=self.stream,
                    table=self.spec.name,
                    count=len(result.refused),
                )
                if self._on_refused is not None:
                    await self._on_refused(self.stream, self.spec.name, result.refused)
            return self._account(result)

    def _account(self, result: _Sealed) -> bool:
        """Book a seal attempt on the event loop: metrics, retry state, listeners."""
        self._retry = result.remaining
        self._oldest["retry"] = result.remaining_oldest
        if result.rows:
            # Metrics are touched on the event loop only, never from the worker thread.
            self._metrics.rows.inc(self.stream, self.spec.name, amount=result.rows)
            sealed_ns = self.stats.last_seal_ns
            for recv_ns, counts in result.recv_ns:
                latency = (sealed_ns - recv_ns) / 1e9
                histogram = self._metrics.seal_latency
                histogram.observe_many(latency, self.stream, self.spec.name, counts=counts)
        if result.error:
            self._metrics.storage_errors.inc(self.stream, self.spec.name)
            log.error(
                "seal_failed",
                stream=self.stream,
                table=self.spec.name,
                error=result.error,
                rows_waiting=sum(part.num_rows for _, part in result.remaining),
            )
        self._drained.set()
        self._drained = anyio.Event()
        if result.rows and self._on_sealed is not None:
            self._on_sealed(self.stream)
        return not result.remaining

    def _write(self, records: list[Any], tables: list[pa.Table]) -> _Sealed:
        """Convert, sort, split by date and seal; records that do not convert are refused."""
        parts = list(tables)
        refused: Refused = []
        if records:
            converted, refused = convert_or_refuse(self.spec, records)
            if converted is not None:
                parts.append(converted)
        if not parts:
            return _Sealed(refused=refused)
        table = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
        table = prepare(table, self.spec).replace_schema_metadata(self._metadata)
        result = self._write_parts(split_by_date(table, self.spec.time_column))
        result.refused = refused
        if not result.remaining:  # all in files: what they were written from can go
            del parts, table
            records.clear()
            _release(tables, lambda: self._closing)
        return result

    def _write_parts(self, parts: list[tuple[str, pa.Table]]) -> _Sealed:
        """Seal date parts in order; stop at the first failure and hand back what is left."""
        result = _Sealed()
        for index, (day, part) in enumerate(parts):
            first = pc.min(part[self.spec.time_column].cast(pa.int64())).as_py() or 0
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(first // 1_000_000_000))
            self._seq += 1
            name = f"part-{stamp}-{self._writer_id}-{self._seq:06d}.parquet"
            try:
                with table_lock(self._directory, shared=True):
                    write_parquet_atomically(
                        part,
                        self._directory / f"date={day}",
                        name,
                        compression=self._settings.compression,
                        fsync=self._settings.fsync != "never",
                    )
            except StorageError as exc:
                result.remaining = parts[index:]
                result.remaining_oldest = min(
                    pc.min(p["recv_ts"].cast(pa.int64())).as_py() or 0 for _, p in result.remaining
                )
                result.error = str(exc)
                break
            self.stats.rows += part.num_rows
            self.stats.files += 1
            result.rows += part.num_rows
            # A frame's rows share their receive time: its distinct values and their counts,
            # so that the event loop observes thousands of values rather than every row.
            received = part["recv_ts"].cast(pa.int64()).to_numpy()
            result.recv_ns.append(np.unique(received, return_counts=True))
        if result.rows:
            self.stats.last_seal_ns = time.time_ns()
            log.debug("file_sealed", stream=self.stream, table=self.spec.name, rows=result.rows)
        return result


@dataclass(slots=True)
class Dataset:
    """Every table writer of this process, created on first use and sealed on exit."""

    root: Path
    settings: StorageSettings
    writer_id: str
    metadata: dict[str, str]
    indicator_columns: Sequence[str]
    metrics: Metrics
    _group: anyio.abc.TaskGroup
    writers: dict[tuple[StreamName, str], TableWriter] = field(default_factory=dict)
    on_sealed: Callable[[StreamName], None] | None = None
    """Told after any writer sealed rows (the journal then deletes covered segments)."""
    admission: Callable[[StreamName, TableSpec], Admission | None] | None = None
    """Gives each writer its `admit` filter when it is created (crash recovery)."""
    on_refused: Callable[[StreamName, str, Refused], Awaitable[None]] | None = None
    """Takes the records a table could not convert (the quarantine)."""
    before_seal: Callable[[StreamName], Awaitable[None]] | None = None
    """Awaited by every seal before it writes (the journal first holds the rows' frames)."""

    def writer(self, stream: StreamName, table: str) -> TableWriter:
        """The writer of `stream/table`, started on first use."""
        key = (stream, table)
        writer = self.writers.get(key)
        if writer is None:
            spec = table_spec(stream, table, self.indicator_columns)
            writer = TableWriter(
                self.root,
                stream,
                spec,
                self.settings,
                writer_id=self.writer_id,
                metadata=self.metadata,
                metrics=self.metrics,
                on_sealed=self._sealed,
                on_refused=self.on_refused,
                before_seal=self._before_seal,
            )
            if self.admission is not None:
                writer.admit = self.admission(stream, spec)
            self.writers[key] = writer
            self._group.start_soon(writer.run)
        return writer

    def oldest_unsealed_ns(self, stream: StreamName) -> int | None:
        """Receive time of the oldest row of `stream` that no Parquet file holds yet."""
        return min(
            (
                ns
                for (s, _), w in self.writers.items()
                if s == stream and (ns := w.oldest_unsealed_ns) is not None
            ),
            default=None,
        )

    def _sealed(self, stream: StreamName) -> None:
        if self.on_sealed is not None:
            self.on_sealed(stream)

    async def _before_seal(self, stream: StreamName) -> None:
        if self.before_seal is not None:
            await self.before_seal(stream)


@asynccontextmanager
async def open_dataset(
    root: Path,
    settings: StorageSettings,
    *,
    writer_id: str,
    metadata: dict[str, str],
    indicator_columns: Sequence[str],
    metrics: Metrics | None = None,
    admission: Callable[[StreamName, TableSpec], Admission | None] | None = None,
    on_refused: Callable[[StreamName, str, Refused], Awaitable[None]] | None = None,
) -> AsyncIterator[Dataset]:
    """A dataset whose writers all seal their buffers when the block exits, however it exits.

    Records a table cannot convert are handed to `on_refused` (the quarantine) after each seal.
    """
    await anyio.to_thread.run_sync(_check_writable, root)
    async with anyio.create_task_group() as group:
        dataset = Dataset(
            root,
            settings,
            writer_id,
            metadata,
            indicator_columns,
            metrics or Metrics(),
            group,
            admission=admission,
            on_refused=on_refused,
        )
        try:
            yield dataset
        finally:
            for writer in dataset.writers.values():
                writer.close()
