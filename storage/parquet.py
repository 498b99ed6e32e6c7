"""Parquet output: one writer per table per process, files that appear only by rename.

Layout: `<data_dir>/<stream>/<table>/date=YYYY-MM-DD/part-<first ts>-<writer id>-<seq>.parquet`,
hive-partitioned by the UTC date of the table's time column, rows sorted by (symbol, ts). A file is
written under a hidden temporary name, fsynced, renamed into place and its directory fsynced, so a
reader never sees a partial file and a crash never leaves one. The writer id (shard, start time,
pid, random) keeps names distinct across restarts and shards writing to one dataset.
"""

from __future__ import annotations

import os
import secrets
import time
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
from storage.refusals import CONVERSION_ERRORS, Refused, convert_or_refuse
from storage.schemas import SYMBOL, TableSpec, table_spec

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
    from pathlib import Path

    import numpy.typing as npt

    from ingest.config import StorageSettings, StreamName

__all__ = [
    "Dataset",
    "TableWriter",
    "WriterStats",
    "make_writer_id",
    "open_dataset",
]

log = structlog.get_logger("storage")

_DAY_NS: Final = 86_400 * 1_000_000_000
SEAL_GRACE_SECONDS: Final = 30.0
"""How long shutdown may spend sealing open buffers; systemd's TimeoutStopSec sits above it."""


def make_writer_id(shard: tuple[int, int] = (0, 1)) -> str:
    """A name part unique to this process: shard, start time, pid and a random suffix."""
    started = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"s{shard[0]}of{shard[1]}-{started}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(slots=True)
class WriterStats:
    """What one table writer has done."""

    rows: int = 0
    files: int = 0
    last_seal_ns: int = 0


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_parquet_atomically(
    table: pa.Table, directory: Path, name: str, *, compression: str, fsync: bool
) -> None:
    """Write `table` as `directory/name` via a temporary file and a rename."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / name
    temporary = directory / f".{name}.tmp"
    try:
        pq.write_table(
            table,
            temporary,
            compression=cast("Any", None if compression == "none" else compression),
            use_dictionary=True,
            write_statistics=True,
            row_group_size=1_000_000,
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
    if "symbol" in table.column_names and pa.types.is_dictionary(table.schema.field("symbol").type):
        table = table.set_column(
            table.schema.get_field_index("symbol"), "symbol", table["symbol"].cast(pa.string())
        )
    table = table.sort_by([(key, "ascending") for key in spec.sort_by])
    if "symbol" in table.column_names:
        index = table.schema.get_field_index("symbol")
        table = table.set_column(index, pa.field("symbol", SYMBOL), table["symbol"].cast(SYMBOL))
    return table


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
        on_refused: Callable[[StreamName, str, Refused], Awaitable[None]] | None = None,
    ) -> None:
        self.stream = stream
        self._on_refused = on_refused
        self._metrics = metrics
        self.spec = spec
        self.stats = WriterStats()
        self._directory = root / stream / spec.name
        self._settings = settings
        self._writer_id = writer_id
        self._metadata = {k.encode(): v.encode() for k, v in metadata.items()}
        self._buffer: list[Any] = []
        self._seq = 0
        self._full = anyio.Event()
        self._drained = anyio.Event()
        self._closing = False
        self._high_water = max(4 * settings.roll_rows, 10_000)

    async def put(self, records: Sequence[Any]) -> None:
        """Buffer records; waits while the buffer is over its bound (slow disk backpressure)."""
        while len(self._buffer) >= self._high_water and not self._closing:
            await self._drained.wait()
        self._buffer.extend(records)
        if len(self._buffer) >= self._settings.roll_rows:
            self._full.set()

    def close(self) -> None:
        """Ask `run` to seal what is buffered and return."""
        self._closing = True
        self._full.set()

    async def run(self) -> None:
        """Seal files when the buffer fills or every `roll_seconds`, until closed."""
        structlog.contextvars.clear_contextvars()  # started from whichever symbol wrote first
        try:
            while not self._closing:
                with anyio.move_on_after(self._settings.roll_seconds):
                    await self._full.wait()
                self._full = anyio.Event()
                await self.seal()
        finally:
            with anyio.move_on_after(SEAL_GRACE_SECONDS, shield=True):
                await self.seal()

    async def seal(self) -> None:
        """Write everything buffered so far (in a worker thread) and wake blocked producers."""
        if not self._buffer:
            return
        records, self._buffer = self._buffer, []
        try:
            rows, recv_ns, refused = await anyio.to_thread.run_sync(self._write, records)
        except StorageError as exc:
            self._metrics.storage_errors.inc(self.stream, self.spec.name)
            self._buffer[:0] = records  # keep them for the next attempt
            log.error("seal_failed", stream=self.stream, table=self.spec.name, error=str(exc))
        else:
            # Metrics are touched on the event loop only, never from the worker thread.
            self._metrics.rows.inc(self.stream, self.spec.name, amount=rows)
            sealed_ns = self.stats.last_seal_ns
            latency = (sealed_ns - recv_ns) / 1e9
            self._metrics.seal_latency.observe_many(latency, self.stream, self.spec.name)
            if refused:
                log.warning(
                    "records_refused", stream=self.stream, table=self.spec.name, count=len(refused)
                )
                if self._on_refused is not None:
                    await self._on_refused(self.stream, self.spec.name, refused)
        finally:
            self._drained.set()
            self._drained = anyio.Event()

    def _write(self, records: list[Any]) -> tuple[int, npt.NDArray[np.int64], Refused]:
        """Convert, sort and seal: row count, every row's receive time, the refused records."""
        try:
            table: pa.Table | None = self.spec.to_table(records)
            refused: Refused = []
        except CONVERSION_ERRORS:
            table, refused = convert_or_refuse(self.spec, records)
        if table is None:
            return 0, np.zeros(0, np.int64), refused
        table = prepare(table, self.spec).replace_schema_metadata(self._metadata)
        for day, part in split_by_date(table, self.spec.time_column):
            first = pc.min(part[self.spec.time_column].cast(pa.int64())).as_py() or 0
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(first // 1_000_000_000))
            self._seq += 1
            name = f"part-{stamp}-{self._writer_id}-{self._seq:06d}.parquet"
            write_parquet_atomically(
                part,
                self._directory / f"date={day}",
                name,
                compression=self._settings.compression,
                fsync=self._settings.fsync != "never",
            )
            self.stats.rows += part.num_rows
            self.stats.files += 1
        self.stats.last_seal_ns = time.time_ns()
        log.debug("file_sealed", stream=self.stream, table=self.spec.name, rows=table.num_rows)
        return table.num_rows, table["recv_ts"].cast(pa.int64()).to_numpy(), refused


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
    on_refused: Callable[[StreamName, str, Refused], Awaitable[None]] | None = None

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
                on_refused=self.on_refused,
            )
            self.writers[key] = writer
            self._group.start_soon(writer.run)
        return writer


@asynccontextmanager
async def open_dataset(
    root: Path,
    settings: StorageSettings,
    *,
    writer_id: str,
    metadata: dict[str, str],
    indicator_columns: Sequence[str],
    metrics: Metrics | None = None,
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
            on_refused=on_refused,
        )
        try:
            yield dataset
        finally:
            for writer in dataset.writers.values():
                writer.close()
