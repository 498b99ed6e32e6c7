"""`ingest compact`: merge the small files of closed partitions into large sorted ones, atomically.

A partition `<stream>/<table>/date=D` is closed once its UTC day ended `[storage] compact_after`
ago. Its files are merged into files of at most `MAX_ROWS` rows sorted by the table's sort order
(symbol, ts), with the union of their schemas (an added nullable column reads as null in older
rows). Row count and an order-independent content checksum are compared before the swap. A table
whose rows are restated (`TableSpec.versions`: news articles, edited after publication) keeps the
newest version of each row only; the checksum is then the kept rows'.

The swap is one step for readers. A transaction works in `<data_dir>/_compact/<txn>/`:

1. `intent.json` names the partition, the input files and the output files (fsynced);
2. the merged files are written into `<txn>/date=D/` (fsynced);
3. under the table's exclusive lock (writers take it shared while they seal), files that appeared
   in the partition since it was read are hard-linked into `<txn>/date=D/` too;
4. `<txn>/date=D` and the live `date=D` are exchanged with `renameat2(RENAME_EXCHANGE)`: readers
   see the old files or the new ones, never both, never neither;
5. the transaction directory, now holding the old files, is removed.

A crash at any step leaves the dataset either as it was (steps 1-3) or compacted (4-5); what is
left in `_compact/` is garbage either way, and `repair_compactions` (every compaction, every
daemon start) removes it, logging whether the swap had happened. One compaction runs at a time
(an exclusive lock on `_compact/.lock`).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import structlog

from ingest.config import STREAMS
from ingest.errors import StorageError
from storage.atomic import exchange_directories, fsync_dir, table_lock
from storage.parquet import prepare, write_parquet_atomically
from storage.schemas import TableSpec, table_spec

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from contextlib import AbstractContextManager
    from pathlib import Path

    from ingest.config import StreamName

__all__ = [
    "COMPACT_DIR",
    "MAX_ROWS",
    "STEPS",
    "PartitionCompacted",
    "compact_dataset",
    "content_checksum",
    "describe",
    "latest_versions",
    "repair_compactions",
]

log = structlog.get_logger("storage.compact")

COMPACT_DIR: Final = "_compact"
MAX_ROWS: Final = 5_000_000
STEPS: Final = ("intent", "staged", "linked", "exchanged", "cleaned")
"""Where `on_step` is called, in order: after each step of the protocol has completed."""


@dataclass(frozen=True, slots=True)
class PartitionCompacted:
    """One partition merged: its files before and after, its rows and their checksum."""

    stream: str
    table: str
    date: str
    files_before: int
    files_after: int
    rows: int
    checksum: str
    superseded: int = 0
    """Earlier versions of restated rows (news articles) left out: the newest one is kept."""


# --- checksums ---------------------------------------------------------------------------------


def content_checksum(table: pa.Table) -> str:
    """A digest of the rows as a set: equal for the same rows in any order or file split."""
    names = sorted(table.column_names)
    table = table.select(names)
    for index, spec in enumerate(table.schema):
        if pa.types.is_dictionary(spec.type):
            table = table.set_column(index, spec.name, table[index].cast(spec.type.value_type))
    sortable = [f.name for f in table.schema if not pa.types.is_nested(f.type)]
    table = table.sort_by([(name, "ascending") for name in sortable])
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        column = table[name].combine_chunks() if table.num_rows else table[name]
        kind = column.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_temporal(kind):
            digest.update(np.asarray(column.is_null()).tobytes())
            values = column
            if pa.types.is_date32(kind):
                values = column.cast(pa.int32())
            elif pa.types.is_temporal(kind):
                values = column.cast(pa.int64())
            filled = values.fill_null(pa.scalar(0, values.type))
            digest.update(np.ascontiguousarray(filled.to_numpy()).tobytes())
        else:
            digest.update(repr(column.to_pylist()).encode())
    return digest.hexdigest()[:16]


def latest_versions(table: pa.Table, identity: str, version: str) -> tuple[pa.Table, int]:
    """The newest version of each identity, and how many earlier versions were left out."""
    ordered = table.sort_by([(identity, "ascending"), (version, "descending")])
    ids = ordered[identity].to_numpy(zero_copy_only=False)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    kept = ordered.filter(pa.array(first))
    return kept, table.num_rows - kept.num_rows


# --- the protocol ------------------------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _spec(stream: StreamName, table: str) -> TableSpec | None:
    """The table's spec (for its sort order); `None` for a directory that is not our table."""
    try:
        return table_spec(stream, table, ())
    except KeyError:
        return None


def _partitions(
    root: Path, table: str | None, day: str | None
) -> Iterator[tuple[StreamName, str, Path]]:
    for stream in STREAMS:
        base = root / stream
        if not base.is_dir():
            continue
        for table_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            if table is not None and table not in (table_dir.name, f"{stream}/{table_dir.name}"):
                continue
            for partition in sorted(table_dir.glob("date=*")):
                if partition.is_dir() and (day is None or partition.name == f"date={day}"):
                    yield stream, table_dir.name, partition


def _closed(partition: Path, now: datetime, after: float) -> bool:
    try:
        day = date.fromisoformat(partition.name.removeprefix("date="))
    except ValueError:
        return False
    end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
    return now >= end + timedelta(seconds=after)


def _compact_partition(
    root: Path,
    stream: StreamName,
    table: str,
    partition: Path,
    *,
    compression: str,
    on_step: Callable[[str], None],
) -> PartitionCompacted | None:
    spec = _spec(stream, table)
    inputs = sorted(partition.glob("*.parquet"))
    if spec is None or len(inputs) < 2:
        return None
    pieces = [pq.read_table(path) for path in inputs]
    try:
        merged = pa.concat_tables(pieces, promote_options="default")
    except pa.ArrowException as exc:
        msg = (
            f"cannot compact {str(partition)!r}: its files' schemas differ by more than added "
            f"columns ({exc}); see docs/schema.md"
        )
        raise StorageError(msg) from exc
    superseded = 0
    if spec.versions is not None:
        merged, superseded = latest_versions(merged, *spec.versions)
    before = content_checksum(merged)
    metadata = dict(pieces[0].schema.metadata or {})
    metadata[b"ingest.compacted_from"] = str(len(inputs)).encode()
    merged = prepare(merged, spec).replace_schema_metadata(metadata)
    del pieces

    txn = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{secrets.token_hex(3)}"
    work = root / COMPACT_DIR / txn
    staging = work / partition.name
    chunks = [merged.slice(i, MAX_ROWS) for i in range(0, merged.num_rows, MAX_ROWS)]
    names = [_output_name(chunk, spec.time_column, txn, k) for k, chunk in enumerate(chunks)]
    intent = {
        "stream": stream,
        "table": table,
        "partition": partition.name,
        "inputs": [p.name for p in inputs],
        "outputs": names,
    }
    work.mkdir(parents=True)
    (work / "intent.json").write_text(json.dumps(intent, indent=1))
    _fsync_file(work / "intent.json")
    fsync_dir(work)
    fsync_dir(work.parent)
    on_step("intent")

    staging.mkdir()
    _copy_mode(partition, staging)
    for name, chunk in zip(names, chunks, strict=True):
        write_parquet_atomically(chunk, staging, name, compression=compression, fsync=True)
    after = content_checksum(pa.concat_tables([pq.read_table(staging / n) for n in names]))
    if after != before:
        shutil.rmtree(work)
        msg = f"compaction of {partition} changed the content ({before} -> {after}); rolled back"
        raise StorageError(msg)
    on_step("staged")

    with table_lock(partition.parent, shared=False):
        present = {p.name for p in partition.glob("*.parquet")}
        missing = {p.name for p in inputs} - present
        if missing:
            shutil.rmtree(work)
            msg = f"{partition}: {len(missing)} input files vanished during compaction"
            raise StorageError(msg)
        for name in sorted(present - {p.name for p in inputs}):
            os.link(partition / name, staging / name)  # sealed meanwhile: keep it visible
        fsync_dir(staging)
        on_step("linked")
        exchange_directories(staging, partition)
        fsync_dir(partition.parent)
        fsync_dir(work)
    on_step("exchanged")

    shutil.rmtree(work)
    fsync_dir(work.parent)
    on_step("cleaned")
    result = PartitionCompacted(
        stream,
        table,
        partition.name.removeprefix("date="),
        len(inputs),
        len(names),
        merged.num_rows,
        before,
        superseded,
    )
    log.info(
        "partition_compacted",
        stream=stream,
        table=table,
        date=result.date,
        files_before=result.files_before,
        files_after=result.files_after,
        rows=result.rows,
        superseded=result.superseded,
        checksum=result.checksum,
    )
    return result


def _output_name(chunk: pa.Table, time_column: str, txn: str, index: int) -> str:
    first = pc.min(chunk[time_column].cast(pa.int64())).as_py() or 0
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(first // 1_000_000_000))
    return f"part-{stamp}-compact-{txn}-{index + 1:06d}.parquet"


def _copy_mode(source: Path, target: Path) -> None:
    """The new partition directory keeps the old one's mode and owner (the daemon writes in it)."""
    info = source.stat()
    os.chmod(target, info.st_mode & 0o7777)
    if os.geteuid() == 0:
        os.chown(target, info.st_uid, info.st_gid)


# --- entry points ------------------------------------------------------------------------------


def _global_lock(root: Path, *, wait: bool) -> AbstractContextManager[bool]:
    return table_lock(root / COMPACT_DIR, shared=False, wait=wait)


def repair_compactions(root: Path) -> int:
    """Remove what interrupted compactions left in `_compact/`; how many were found.

    Skipped (0) while a compaction runs. Either way the dataset itself was consistent already.
    """
    base = root / COMPACT_DIR
    if not base.is_dir():
        return 0
    with _global_lock(root, wait=False) as held:
        return _repair(root) if held else 0


def _repair(root: Path) -> int:
    base = root / COMPACT_DIR
    found = 0
    for work in sorted(p for p in base.iterdir() if p.is_dir()):
        found += 1
        outcome = "rolled_back"
        try:
            intent = json.loads((work / "intent.json").read_text())
            live = root / intent["stream"] / intent["table"] / intent["partition"]
            if intent["outputs"] and all((live / n).exists() for n in intent["outputs"]):
                outcome = "rolled_forward"
        except (OSError, ValueError, KeyError):
            pass  # no complete intent: nothing was swapped
        shutil.rmtree(work)
        log.warning("compaction_repaired", transaction=work.name, outcome=outcome)
    if found:
        fsync_dir(base)
    return found


def compact_dataset(
    root: Path,
    *,
    table: str | None = None,
    day: str | None = None,
    compact_after: float = 3600.0,
    compression: str = "zstd",
    now: datetime | None = None,
    on_step: Callable[[str], None] | None = None,
) -> list[PartitionCompacted]:
    """Compact every closed partition (of `table`, on `day`, when given) under `root`.

    Raises:
        StorageError: another compaction is running, or a partition could not be swapped.
    """
    now = now or datetime.now(UTC)
    step = on_step or (lambda _: None)
    (root / COMPACT_DIR).mkdir(parents=True, exist_ok=True)
    with _global_lock(root, wait=False) as held:
        if not held:
            msg = f"another compaction is running on {str(root)!r}"
            raise StorageError(msg)
        _repair(root)
        done: list[PartitionCompacted] = []
        for stream, name, partition in _partitions(root, table, day):
            if not _closed(partition, now, compact_after):
                log.info("partition_open", stream=stream, table=name, partition=partition.name)
                continue
            try:
                result = _compact_partition(
                    root, stream, name, partition, compression=compression, on_step=step
                )
            except OSError as exc:
                msg = f"cannot compact {str(partition)!r}: {exc.strerror or exc}"
                raise StorageError(msg) from exc
            if result is not None:
                done.append(result)
        return done


def describe(results: Sequence[PartitionCompacted]) -> str:
    """One line per compacted partition, for the command line."""
    if not results:
        return "nothing to compact"
    return "\n".join(
        f"{r.stream}/{r.table} date={r.date}: {r.files_before} files -> {r.files_after}, "
        f"{r.rows} rows, checksum {r.checksum}"
        + (f", {r.superseded} earlier versions replaced" if r.superseded else "")
        for r in results
    )
