"""Crash recovery: frames an unclean stop left in the journal go through the pipeline again.

After SIGKILL or power loss `_journal/<stream>/` holds segments whose frames may be partly sealed
into Parquet. At start, before the live source, the daemon claims every segment of its own shard
that no live process holds (flock), reads each up to its last complete batch (a torn tail is cut,
counted and logged as `journal_torn_tail`, never fatal), and feeds the frames oldest first, with
their original receive times, through fresh routers into a dataset of their own.

Exactly once, without guessing from time windows: a writer seals the rows of one (symbol, date)
in the order they were put (`storage.parquet`), so what a crashed writer sealed of a table is,
per (symbol, date), every row up to some receive time. Recovery reads those marks from the
Parquet files written since the oldest journaled frame (`SealedMarks`) and drops every recovered
row at or below its mark, in every table, the pipeline's bars and anomalies included. Late or
identical rows are recovered as exactly as the rest. Articles carry no symbol (any symbol's task
may write one), so for them the keys of the articles sealed since then decide.

The segments are deleted only once everything recovered is sealed. A recovery that is itself
killed leaves them in place; the next start does the same work, and the marks make it idempotent.
The pipeline is fed every journaled trade, sealed or not, so bars are rebuilt from the oldest
segment on; a bar open at the crash is flushed as `partial` at the end of recovery, as at a
clean stop (docs/operations.md).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import anyio
import anyio.lowlevel
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import structlog

from ingest.config import STREAMS
from ingest.errors import StorageError
from storage.atomic import fsync_dir
from storage.dedup import key_hashes
from storage.journal import list_segments, lock_segment, read_segment
from storage.parquet import open_dataset
from storage.schemas import table_spec
from streams.base import Frame
from streams.messages import FrameDecoder

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from anyio.abc import TaskStatus

    from ingest.config import Settings, StreamName
    from ingest.metrics import Metrics
    from storage.journal import JournalFrame
    from storage.parquet import Admission, Dataset
    from storage.schemas import TableSpec
    from streams.messages import Encoding

__all__ = ["RecoveryRouter", "SealedMarks", "recover_journal"]

log = structlog.get_logger("storage.recovery")

_DAY_NS: Final = 86_400 * 1_000_000_000
_CLOCK_SLACK_NS: Final = 600 * 1_000_000_000
"""Files are candidates if modified up to this long before the oldest frame (clock steps)."""


class RecoveryRouter(Protocol):
    """What recovery needs of a stream router (`ingest.router.StreamRouter`)."""

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """Own the symbol tasks until closed."""

    async def deliver(self, frame: Frame) -> None:
        """Hand one frame to its symbols."""

    def close(self) -> None:
        """Drain and flush every symbol, then let `run` return."""


@dataclass(slots=True)
class _Claim:
    """Segments this process holds the locks of, and what they contained."""

    fds: dict[Path, int] = field(default_factory=dict)
    frames: dict[StreamName, list[JournalFrame]] = field(default_factory=dict)
    torn: dict[StreamName, int] = field(default_factory=dict)

    def release(self, *, delete: bool) -> None:
        for path, fd in self.fds.items():
            if delete:
                path.unlink(missing_ok=True)
            os.close(fd)
        if delete:
            for directory in {path.parent for path in self.fds}:
                fsync_dir(directory)
        self.fds.clear()


def _claim(root: Path, prefix: str) -> _Claim:
    """Lock and read every segment of this shard that no running process owns."""
    claim = _Claim()
    for stream in STREAMS:
        for path in list_segments(root, stream):
            if not path.name.startswith(prefix):
                continue
            fd = lock_segment(path)
            if fd is None:
                continue  # a live process is still writing it
            claim.fds[path] = fd
            read = read_segment(path)
            if read.torn_bytes:
                claim.torn[stream] = claim.torn.get(stream, 0) + 1
                log.warning(
                    "journal_torn_tail",
                    stream=stream,
                    segment=path.name,
                    bytes_cut=read.torn_bytes,
                    frames_kept=len(read.frames),
                )
            claim.frames.setdefault(stream, []).extend(read.frames)
    for frames in claim.frames.values():
        frames.sort(key=lambda f: f.recv_ns)
    return claim


@dataclass(slots=True)
class SealedMarks:
    """What was sealed since the oldest journaled frame, per (stream, table).

    Tables with a `symbol` column: for each (symbol, UTC day) the newest receive time sealed (one
    symbol's rows are put by one task, in order). Articles, which have no symbol and are put by
    whichever symbol task an article is routed to: the keys of every article sealed.
    """

    marks: dict[tuple[StreamName, str], dict[tuple[str, int], int]] = field(default_factory=dict)
    keys: dict[tuple[StreamName, str], set[int]] = field(default_factory=dict)
    indicator_columns: Sequence[str] = ()

    @classmethod
    def load(
        cls,
        root: Path,
        streams: Sequence[StreamName],
        since_ns: int,
        indicator_columns: Sequence[str] = (),
    ) -> SealedMarks:
        """Read the marks from the files modified since `since_ns` (blocking I/O)."""
        found = cls(indicator_columns=indicator_columns)
        cutoff = since_ns - _CLOCK_SLACK_NS
        for stream in streams:
            base = root / stream
            if not base.is_dir():
                continue
            for path in sorted(base.glob("*/date=*/*.parquet")):
                try:
                    if path.stat().st_mtime_ns < cutoff:
                        continue
                    found._add(stream, path)
                except (OSError, pa.ArrowException):
                    continue  # moved away by a compaction: its rows are in the merged file
        return found

    def _add(self, stream: StreamName, path: Path) -> None:
        table = path.parent.parent.name
        if "symbol" not in pq.read_schema(path).names:
            spec = table_spec(stream, table, self.indicator_columns)
            rows = pq.read_table(path, columns=list(spec.keys))
            self.keys.setdefault((stream, table), set()).update(key_hashes(rows, spec.keys))
            return
        day = int(np.datetime64(path.parent.name.removeprefix("date="), "D").astype(np.int64))
        rows = pq.read_table(path, columns=["symbol", "recv_ts"])
        rows = rows.set_column(0, "symbol", rows["symbol"].cast(pa.string()))
        grouped = rows.group_by("symbol").aggregate([("recv_ts", "max")])
        marks = self.marks.setdefault((stream, table), {})
        for symbol, recv_ns in zip(
            cast("list[str]", grouped["symbol"].to_pylist()),
            cast("list[int]", grouped["recv_ts_max"].cast(pa.int64()).to_pylist()),
            strict=True,
        ):
            key = (symbol, day)
            marks[key] = max(marks.get(key, recv_ns), recv_ns)

    def admission(self, stream: StreamName, spec: TableSpec) -> Admission | None:
        """A writer filter dropping the rows of `stream/spec` that were sealed already."""
        marks = self.marks.get((stream, spec.name))
        keys = self.keys.get((stream, spec.name))
        if keys:
            return lambda records: [
                record
                for record, key in zip(
                    records, key_hashes(spec.to_table(records), spec.keys), strict=True
                )
                if key not in keys
            ]
        if not marks:
            return None

        def admit(records: Sequence[Any]) -> Sequence[Any]:
            rows = spec.to_table(records)
            symbols = cast("list[str]", rows["symbol"].cast(pa.string()).to_pylist())
            days: list[int] = (
                rows[spec.time_column].cast(pa.int64()).to_numpy() // _DAY_NS
            ).tolist()
            recv = cast("list[int]", rows["recv_ts"].cast(pa.int64()).to_pylist())
            return [
                record
                for record, symbol, day, ns in zip(records, symbols, days, recv, strict=True)
                if ns > marks.get((symbol, day), -1)
            ]

        return admit


async def _feed(stream: StreamName, frames: Sequence[JournalFrame], router: RecoveryRouter) -> None:
    """Decode journaled frames and deliver them with their original receive times."""
    decoders: dict[Encoding, FrameDecoder] = {}
    for index, journaled in enumerate(frames):
        decoder = decoders.get(journaled.encoding)
        if decoder is None:
            decoder = decoders[journaled.encoding] = FrameDecoder(stream, journaled.encoding)
        decoded = decoder.decode(journaled.payload, journaled.recv_ns)
        # Rejects were quarantined when the frame first arrived.
        await router.deliver(Frame(stream, journaled.recv_ns, decoded.messages))
        if index % 256 == 255:
            await anyio.lowlevel.checkpoint()


async def recover_journal(
    settings: Settings,
    *,
    writer_id: str,
    prefix: str,
    metadata: dict[str, str],
    indicator_columns: Sequence[str],
    metrics: Metrics,
    make_router: Callable[[StreamName, Dataset], RecoveryRouter],
    admission: Callable[[StreamName, TableSpec], Admission | None] | None = None,
) -> int:
    """Replay this shard's orphaned journal segments into the dataset; the frames recovered.

    `make_router(stream, dataset)` builds a `RecoveryRouter` writing into `dataset`. Rows pass
    `admission` (when given) after the sealed marks: the key check of the pipeline's tables.

    Raises:
        StorageError: the recovered rows could not be sealed; the segments are kept.
    """
    root = settings.ingest.data_dir
    started = time.monotonic()
    claim = await anyio.to_thread.run_sync(_claim, root, prefix)
    try:
        if not claim.fds:
            return 0
        for stream, torn in claim.torn.items():
            metrics.torn_tails.inc(stream, amount=torn)
        frames = sum(len(f) for f in claim.frames.values())
        oldest = min((f[0].recv_ns for f in claim.frames.values() if f), default=time.time_ns())
        streams = list(claim.frames)
        marks = await anyio.to_thread.run_sync(
            SealedMarks.load, root, streams, oldest, indicator_columns
        )
        async with open_dataset(
            root,
            settings.storage,
            writer_id=f"{writer_id}-recovery",
            metadata=metadata,
            indicator_columns=indicator_columns,
            metrics=metrics,
            admission=functools.partial(_admission, marks, admission),
        ) as dataset:
            for stream, journaled in claim.frames.items():
                router = make_router(stream, dataset)
                async with anyio.create_task_group() as group:
                    await group.start(router.run)
                    await _feed(stream, journaled, router)
                    router.close()
                metrics.recovered.inc(stream, amount=len(journaled))
        _check_sealed(dataset)
        segments = len(claim.fds)
        await anyio.to_thread.run_sync(lambda: claim.release(delete=True))
        log.info(
            "journal_recovered",
            segments=segments,
            frames=frames,
            torn_tails=sum(claim.torn.values()),
            rows=sum(w.stats.rows for w in dataset.writers.values()),
            seconds=round(time.monotonic() - started, 3),
        )
        return frames
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: claim.release(delete=False))


def _admission(
    marks: SealedMarks,
    then: Callable[[StreamName, TableSpec], Admission | None] | None,
    stream: StreamName,
    spec: TableSpec,
) -> Admission | None:
    first = marks.admission(stream, spec)
    second = then(stream, spec) if then is not None else None
    if first is None or second is None:
        return first or second
    return lambda records: second(first(records))


def _check_sealed(dataset: Dataset) -> None:
    unsealed = sorted(
        f"{stream}/{table}"
        for (stream, table), writer in dataset.writers.items()
        if writer.oldest_unsealed_ns is not None
    )
    if unsealed:
        msg = (
            "journal recovery could not seal "
            + ", ".join(unsealed)
            + "; the journal is kept for the next start"
        )
        raise StorageError(msg)
