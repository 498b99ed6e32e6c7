"""De-duplication against the dataset: a record whose keys are already stored is dropped.

Restarting an ingestion must be safe: a replay restarted over the same recording, or (issue 6) a
REST back-fill overlapping live data, sends records the dataset already holds. Each table's keys
(`TableSpec.keys`, listed in `docs/schema.md`) say when two rows are one fact.

At start the filter is seeded per (stream, table) from the newest files: the watermark `W` (the
newest `watermark_column` value stored) and the keys of every row within `[storage]
dedup_horizon` before it. An incoming row is then

- newer than `W`: new, admitted without looking at its keys;
- within the horizon (`W - horizon < t <= W`): admitted only if its keys are not stored yet (and
  remembered, so a second copy is dropped too);
- older than the horizon: taken as stored, dropped. Not so for the pipeline's own tables (bars,
  anomalies): a daily bar is stamped with its day's start, far behind `W`, and is new all the same;
  their rows are dropped only on a key match, and their keys are learnt over the horizon or the
  longest time bar, whichever is longer (a restart mid-bucket writes that bucket's bar again).

Market data is filtered at the intake, per frame, before the journal and the pipeline
(`filter_frame`), so a duplicate trade never counts twice in a bar. The pipeline's tables are
filtered at their writers (`admission`), which drops a bar the dataset already holds (say, the
partial bar of a minute in which the daemon was restarted twice).

Once a table's rows are all past `W + horizon` (the longer window for the pipeline's tables, whose
oldest open bucket must have closed) its state retires and the check costs one dict
lookup per frame; a stream with no live state costs one attribute read. Keys are kept as 64-bit
hashes in a sorted array (8 bytes a row).

API for other producers (issue 6's back-fill): build rows as an Arrow table of the table's schema
(`storage.schemas.table_spec(...).to_table(records)`), then

    mask = dedup.admit(stream, table, rows)      # numpy bool per row: True = new, write it
    dedup.remember(stream, table, rows)           # rows written some other way: drop them later

`remember` also opens a state where there was none (with no horizon floor), so live rows and a
back-fill of the same window can be checked against each other.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import structlog

from storage.schemas import table_for, table_spec, tables_of
from streams.base import Frame

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence
    from pathlib import Path

    import numpy.typing as npt

    from ingest.config import StreamName
    from ingest.metrics import Metrics
    from storage.parquet import Admission
    from storage.schemas import TableSpec

__all__ = ["DERIVED_TABLES", "DedupFilter", "key_hashes"]

log = structlog.get_logger("storage.dedup")

DERIVED_TABLES: Final = frozenset({"bars", "anomalies"})
"""Computed by the pipeline: checked at their writers, by keys only (no horizon floor)."""
_NO_FLOOR: Final = np.iinfo(np.int64).min


@dataclass(slots=True)
class _State:
    """One table's memory of what is stored near its newest row."""

    watermark: int
    floor: int
    known: npt.NDArray[np.int64]
    window: int
    """Rows newer than `watermark + window` cannot repeat a stored one: the state retires."""
    extra: set[int] = field(default_factory=set)
    retired: bool = False

    def contains(self, key: int) -> bool:
        if key in self.extra:
            return True
        index = int(np.searchsorted(self.known, key))
        return index < len(self.known) and int(self.known[index]) == key


def _times(column: pa.ChunkedArray[Any] | pa.Array[Any]) -> npt.NDArray[np.int64]:
    return np.asarray(column.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def _plain(column: pa.ChunkedArray[Any]) -> list[Any]:
    """A key column as hashable Python values: dictionaries decoded, times as integers."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
    elif pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        column = column.cast(pa.int64() if pa.types.is_timestamp(kind) else pa.int32())
    return column.to_pylist()


def key_hashes(rows: pa.Table, keys: Sequence[str]) -> list[int]:
    """One 64-bit hash per row of its key columns."""
    columns = [_plain(rows[k]) for k in keys]
    return [hash(values) for values in zip(*columns, strict=True)]


class DedupFilter:
    """Per (stream, table): the watermark, the floor and the keys stored near the watermark."""

    def __init__(
        self,
        horizon_seconds: float,
        indicator_columns: Sequence[str] = (),
        *,
        derived_window_seconds: float = 0.0,
        metrics: Metrics | None = None,
    ) -> None:
        """`derived_window_seconds`: how far back bar keys are learnt (the longest time bar)."""
        self._metrics = metrics
        self.horizon_ns = int(horizon_seconds * 1e9)
        self._derived_window_ns = int(max(horizon_seconds, derived_window_seconds) * 1e9)
        self.dropped: Counter[tuple[StreamName, str]] = Counter()
        """Rows dropped as already stored, per (stream, table)."""
        self._indicators = tuple(indicator_columns)
        self._states: dict[tuple[StreamName, str], _State] = {}
        self._active: dict[StreamName, bool] = {}
        self._encoder = msgspec.json.Encoder()
        self._tables: dict[tuple[StreamName, type], str | None] = {}

    def active(self, stream: StreamName) -> bool:
        """Whether any table of `stream` still has a live state (else frames pass untouched)."""
        return self._active.get(stream, False)

    # --- the general API -----------------------------------------------------------------------

    def admit(self, stream: StreamName, table: str, rows: pa.Table) -> npt.NDArray[np.bool_]:
        """Which rows are new (True) and which the dataset already holds (False)."""
        state = self._states.get((stream, table))
        admitted = np.ones(rows.num_rows, dtype=np.bool_)
        if state is None or state.retired or not rows.num_rows:
            return admitted
        spec = self._spec(stream, table)
        times = _times(rows[spec.watermark_column])
        if int(times.min()) > state.watermark + state.window:
            state.retired = True
            self._refresh(stream)
            return admitted
        admitted = times > state.watermark
        check = np.flatnonzero(~admitted & (times > state.floor))
        if len(check):
            for index, key in zip(check, key_hashes(rows.take(check), spec.keys), strict=True):
                if not state.contains(key):
                    admitted[index] = True
                    state.extra.add(key)
        dropped = len(admitted) - int(admitted.sum())
        if dropped:
            self.dropped[(stream, table)] += dropped
            if self._metrics is not None:
                self._metrics.deduplicated.inc(stream, table, amount=dropped)
        return admitted

    def remember(self, stream: StreamName, table: str, rows: pa.Table) -> None:
        """Treat `rows` as stored: later copies of them are dropped."""
        if not rows.num_rows:
            return
        spec = self._spec(stream, table)
        newest = int(_times(rows[spec.watermark_column]).max())
        state = self._states.get((stream, table))
        if state is None:
            state = self._states[(stream, table)] = _State(
                newest, _NO_FLOOR, np.empty(0, np.int64), self._window(table)
            )
        state.watermark = max(state.watermark, newest)
        state.extra.update(key_hashes(rows, spec.keys))
        state.retired = False
        self._refresh(stream)

    # --- frames at the daemon's intake ---------------------------------------------------------

    def filter_frame(self, frame: Frame) -> Frame | None:
        """`frame` without the messages already stored; `None` if nothing is left to do.

        A frame that lost messages is re-encoded (as JSON) so the journal keeps what was admitted.
        """
        stream = frame.stream
        groups: dict[str, list[int]] = {}
        for index, message in enumerate(frame.messages):
            table = self._table(stream, type(message))
            if table is not None:
                groups.setdefault(table, []).append(index)
        drop: set[int] = set()
        for table, indices in groups.items():
            state = self._states.get((stream, table))
            if state is None or state.retired:
                continue
            rows = self._spec(stream, table).to_table([frame.messages[i] for i in indices])
            mask = self.admit(stream, table, rows)
            drop.update(i for i, ok in zip(indices, mask, strict=True) if not ok)
        if not drop:
            return frame
        kept = [m for i, m in enumerate(frame.messages) if i not in drop]
        if not kept and not frame.rejects:
            return None
        return Frame(stream, frame.recv_ns, kept, frame.rejects, self._encoder.encode(kept))

    def admission(self, stream: StreamName, spec: TableSpec) -> Admission | None:
        """A writer filter for the pipeline's tables (market data is filtered at the intake)."""
        if spec.name not in DERIVED_TABLES:
            return None

        def admit(records: Sequence[Any]) -> Sequence[Any]:
            state = self._states.get((stream, spec.name))
            if state is None or state.retired:
                return records
            mask = self.admit(stream, spec.name, spec.to_table(records))
            return [record for record, ok in zip(records, mask, strict=True) if ok]

        return admit

    # --- seeding -------------------------------------------------------------------------------

    def seed(
        self,
        root: Path,
        streams: Sequence[StreamName],
        tables: Collection[str] | None = None,
    ) -> None:
        """Learn what the dataset under `root` holds near each table's newest row (blocking I/O).

        `tables` limits the tables seeded (all of each stream's by default).
        """
        for stream in streams:
            for table in tables_of(stream):
                if tables is not None and table not in tables:
                    continue
                state = self._seed_table(root / stream / table, self._spec(stream, table))
                if state is not None:
                    self._states[(stream, table)] = state
                    log.info(
                        "dedup_seeded",
                        stream=stream,
                        table=table,
                        watermark=state.watermark,
                        keys=len(state.known),
                    )
            self._refresh(stream)

    def _seed_table(self, directory: Path, spec: TableSpec) -> _State | None:
        files = _recent_files(directory, whole=spec.watermark_column != spec.time_column)
        newest = {path: _max_value(path, spec.watermark_column) for path in files}
        found = [ns for ns in newest.values() if ns is not None]
        if not found:
            return None
        watermark = max(found)
        window = self._window(spec.name)
        floor = watermark - window
        hashes: list[int] = []
        for path, ns in newest.items():
            if ns is None or ns <= floor:
                continue
            try:
                rows = pq.read_table(path, columns=list(dict.fromkeys(spec.keys)))
                times = pq.read_table(path, columns=[spec.watermark_column])
            except (OSError, pa.ArrowException):
                continue  # moved away by a compaction meanwhile: its rows are in the new file
            near = np.flatnonzero(_times(times[spec.watermark_column]) > floor)
            hashes += key_hashes(rows.take(near), spec.keys)
        known = np.unique(np.asarray(hashes, dtype=np.int64))
        derived = spec.name in DERIVED_TABLES
        return _State(watermark, _NO_FLOOR if derived else floor, known, window)

    # --- internals -----------------------------------------------------------------------------

    def _window(self, table: str) -> int:
        return self._derived_window_ns if table in DERIVED_TABLES else self.horizon_ns

    def _spec(self, stream: StreamName, table: str) -> TableSpec:
        return table_spec(stream, table, self._indicators)

    def _table(self, stream: StreamName, kind: type) -> str | None:
        key = (stream, kind)
        if key not in self._tables:
            self._tables[key] = table_for(stream, kind)
        return self._tables[key]

    def _refresh(self, stream: StreamName) -> None:
        self._active[stream] = any(
            not state.retired for (s, _), state in self._states.items() if s == stream
        )


def _recent_files(directory: Path, *, whole: bool) -> list[Path]:
    """The files of the newest two date partitions (all partitions when `whole`)."""
    if not directory.is_dir():
        return []
    partitions = sorted(p for p in directory.glob("date=*") if p.is_dir())
    if not whole:
        partitions = partitions[-2:]
    return [f for p in partitions for f in sorted(p.glob("*.parquet"))]


def _max_value(path: Path, column: str) -> int | None:
    """The newest value of a timestamp column, from the file's statistics when it has them."""
    try:
        parquet = pq.ParquetFile(path)
        metadata = parquet.metadata
        leaf = next(
            (i for i in range(metadata.num_columns) if metadata.schema.column(i).path == column),
            None,
        )
        field_type = parquet.schema_arrow.field(column).type
        if leaf is not None and field_type == pa.timestamp("ns", tz="UTC"):
            stats = [
                metadata.row_group(g).column(leaf).statistics
                for g in range(metadata.num_row_groups)
            ]
            if stats and all(s is not None and s.has_min_max for s in stats):
                return max(int(cast("int", s.max_raw)) for s in stats if s is not None)
        values = _times(pq.read_table(path, columns=[column])[column])
    except (OSError, KeyError, pa.ArrowException):
        return None
    return int(values.max()) if len(values) else None
