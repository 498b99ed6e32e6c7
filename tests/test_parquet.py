"""The Parquet writer: atomic files, date partitions, sort order, bounded buffers."""

from __future__ import annotations

import dataclasses
import threading
import weakref
from threading import current_thread
from typing import TYPE_CHECKING, Any

import anyio
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import storage.parquet
from ingest.batch import Arrivals, group_flush
from ingest.config import StorageSettings
from ingest.errors import StorageError
from storage.bulk import BULK_ROWS, BulkRows
from storage.parquet import COMPACT_ROWS, open_dataset
from storage.schemas import table_spec
from streams.messages import StockTrade

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path

    from storage.parquet import Dataset, TableWriter


def trade(symbol: str, t: str, i: int) -> StockTrade:
    return StockTrade(S=symbol, t=t, i=i, x="V", p=10.0 + i, s=1.0, recv_ns=1)


def files(root: Path) -> list[Path]:
    return sorted(root.glob("stocks/trades/*/*.parquet"))


def scratch_dataset(
    root: Path, settings: StorageSettings | None = None, **options: Any
) -> AbstractAsyncContextManager[Dataset]:
    """A dataset at `root` (default storage settings unless given), no indicator columns."""
    return open_dataset(
        root,
        settings or StorageSettings(),
        writer_id="w",
        metadata={},
        indicator_columns=(),
        **options,
    )


async def put_one_trade_tables(writer: TableWriter, n: int) -> None:
    """`n` tables of one trade each, a second apart (trade ids 0 to n - 1), as flushes put them."""
    spec = table_spec("stocks", "trades", ())
    for i in range(n):
        await writer.put_table(spec.to_table([trade("A", f"2024-07-01T10:00:0{i}Z", i)]), 1)


def write(root: Path, records: list[StockTrade]) -> None:
    """Write records through a dataset in its own event loop."""

    async def main() -> None:
        async with scratch_dataset(root) as dataset:
            await dataset.writer("stocks", "trades").put(records)

    anyio.run(main)


class TestFiles:
    def test_rows_split_by_utc_date(self, tmp_path: Path) -> None:
        """Trades either side of midnight UTC land in their own date partitions."""
        write(
            tmp_path,
            [
                trade("A", "2024-07-01T23:59:59.999999999Z", 1),
                trade("A", "2024-07-02T00:00:00Z", 2),
            ],
        )
        dates = sorted(p.parent.name for p in files(tmp_path))
        assert dates == ["date=2024-07-01", "date=2024-07-02"]

    def test_sorted_by_symbol_then_time(self, tmp_path: Path) -> None:
        """Rows arrive in any order and are written sorted by (symbol, ts)."""
        write(
            tmp_path,
            [
                trade("B", "2024-07-01T10:00:02Z", 1),
                trade("A", "2024-07-01T10:00:03Z", 2),
                trade("B", "2024-07-01T10:00:01Z", 3),
            ],
        )
        (path,) = files(tmp_path)
        table = pq.read_table(path)
        assert table["symbol"].to_pylist() == ["A", "B", "B"]
        assert table["trade_id"].to_pylist() == [2, 3, 1]

    def test_timestamps_keep_nanoseconds(self, tmp_path: Path) -> None:
        """RFC 3339 with nine fractional digits round-trips to the nanosecond."""
        write(tmp_path, [trade("A", "2024-07-01T10:00:00.123456789Z", 1)])
        (path,) = files(tmp_path)
        ts = pq.read_table(path)["ts"]
        assert str(ts.type) == "timestamp[ns, tz=UTC]"
        assert ts.cast(pa.int64()).to_pylist() == [1_719_828_000_123_456_789]

    def test_unwritable_directory_is_a_storage_error(self, tmp_path: Path) -> None:
        """A data directory that cannot be created is named in a StorageError."""
        blocker = tmp_path / "file"
        blocker.write_text("")
        with pytest.raises(StorageError, match="cannot be created"):
            write(blocker / "data", [trade("A", "2024-07-01T10:00:00Z", 1)])


class TestBackpressure:
    @pytest.mark.anyio
    async def test_put_waits_while_buffer_is_full(self, tmp_path: Path) -> None:
        """Over the high-water mark `put` blocks until a seal drains the buffer."""
        settings = dataclasses.replace(StorageSettings(), roll_rows=1, roll_seconds=3600.0)
        async with scratch_dataset(tmp_path, settings) as dataset:
            writer = dataset.writer("stocks", "trades")
            writer._high_water = 2  # a tiny bound to observe blocking
            await writer.put([trade("A", "2024-07-01T10:00:00Z", i) for i in range(2)])
            with anyio.fail_after(10):
                await writer.put([trade("A", "2024-07-01T10:00:01Z", 9)])
            assert writer.stats.rows >= 2


class TestRefusedRecords:
    def test_unconvertible_record_is_split_off_and_handed_over(self, tmp_path: Path) -> None:
        """A record whose stamp Arrow cannot parse is refused alone; its buffer is written."""
        refused: list[tuple[str, str, list[int]]] = []

        async def on_refused(stream: str, table: str, records: list[tuple[object, str]]) -> None:
            refused.append((stream, table, [r.i for r, _ in records]))  # type: ignore[attr-defined]

        async def main() -> None:
            async with scratch_dataset(tmp_path, on_refused=on_refused) as dataset:
                records = [trade("A", f"2024-07-01T10:00:0{i}Z", i) for i in range(7)]
                records[3] = trade("A", "2024-07-01T25:61:00Z", 3)
                await dataset.writer("stocks", "trades").put(records)

        anyio.run(main)
        (path,) = files(tmp_path)
        assert pq.read_table(path)["trade_id"].to_pylist() == [0, 1, 2, 4, 5, 6]
        assert refused == [("stocks", "trades", [3])]


class TestUnsealedRows:
    def test_rows_in_a_seal_under_way_stay_visible(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Rows handed to a seal are in `buffered_records` until their file exists.

        A back-fill's overlap check reads the writer and then the files: a row in neither
        (a slow disk mid-write) would be fetched from REST and stored twice.
        """
        entered, release = threading.Event(), threading.Event()
        real = storage.parquet.write_parquet_atomically

        def held(*args: object, **kwargs: object) -> None:
            entered.set()
            release.wait(10)
            real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(storage.parquet, "write_parquet_atomically", held)
        during: list[list[int]] = []
        after: list[list[int]] = []

        async def main() -> None:
            async with scratch_dataset(tmp_path) as dataset:
                writer = dataset.writer("stocks", "trades")
                await writer.put([trade("A", "2024-07-01T10:00:00Z", i) for i in range(3)])
                async with anyio.create_task_group() as group:
                    group.start_soon(writer.seal)
                    await anyio.to_thread.run_sync(entered.wait, 10)
                    await writer.put([trade("A", "2024-07-01T10:00:01Z", 7)])
                    during.append([r.i for r in writer.buffered_records()])
                    during.append([len(await anyio.to_thread.run_sync(files, tmp_path))])
                    release.set()
                after.append([r.i for r in writer.buffered_records()])

        anyio.run(main)
        assert during == [[0, 1, 2, 7], [0]]
        assert after == [[7]]


class TestTables:
    def test_rows_put_as_a_table_and_as_records_share_one_sorted_file(self, tmp_path: Path) -> None:
        """The router's bulk tables and a symbol task's records are sealed together, sorted."""
        spec = table_spec("stocks", "trades", ())

        async def main() -> None:
            async with scratch_dataset(tmp_path) as dataset:
                writer = dataset.writer("stocks", "trades")
                assert writer.takes_tables
                bulk = [
                    trade("B", "2024-07-01T10:00:02Z", 1),
                    trade("A", "2024-07-01T10:00:03Z", 2),
                ]
                await writer.put_table(spec.to_table(bulk), 1)
                await writer.put([trade("A", "2024-07-01T10:00:01Z", 3)])
                assert writer.buffered_rows == 3
                assert [t.num_rows for t in writer.buffered_tables()] == [2]

        anyio.run(main)
        (path,) = files(tmp_path)
        table = pq.read_table(path)
        assert table["symbol"].to_pylist() == ["A", "A", "B"]
        assert table["trade_id"].to_pylist() == [3, 2, 1]

    def test_a_seal_lets_go_of_its_tables_in_the_writers_thread(self, tmp_path: Path) -> None:
        """The tables put since the last seal are freed by the seal's worker thread, once written.

        A trades seal at 100k trades/s holds ~600 of them; freed on the event loop they stalled
        it for 20-35 ms (docs/performance.md, "Bars in arrays, and seals off the loop").
        """
        freed_in: list[str] = []

        async def main() -> None:
            async with scratch_dataset(tmp_path) as dataset:
                writer = dataset.writer("stocks", "trades")
                await put_one_trade_tables(writer, 3)
                for table in writer.buffered_tables():
                    weakref.finalize(table, lambda: freed_in.append(current_thread().name))
                del table  # the test's own reference
                assert await writer.seal()
                assert writer.buffered_tables() == []

        anyio.run(main)
        assert len(freed_in) == 3
        assert threading.main_thread().name not in freed_in
        (path,) = files(tmp_path)
        assert pq.read_table(path)["trade_id"].to_pylist() == [0, 1, 2]

    def test_a_seal_pauses_between_steps_of_letting_go_but_not_when_stopping(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Freeing gives the loop the GIL between steps; a writer closing does not wait for it."""
        spec = table_spec("stocks", "trades", ())
        pauses: list[float] = []
        monkeypatch.setattr(storage.parquet, "_pause", pauses.append)

        async def main() -> None:
            async with scratch_dataset(tmp_path) as dataset:
                writer = dataset.writer("stocks", "trades")
                await put_one_trade_tables(writer, 9)
                assert await writer.seal()
                assert pauses == [storage.parquet.RELEASE_PAUSE] * 3  # 9 tables, 4 a step
                pauses.clear()
                await writer.put_table(spec.to_table([trade("A", "2024-07-01T10:00:09Z", 9)]), 1)
            # Leaving the dataset closes the writer, whose last seal lets go without pausing.
            assert pauses == [0.0]

        anyio.run(main)
        assert len(files(tmp_path)) == 2

    def test_a_failed_seal_keeps_its_rows_for_the_retry(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Rows a seal could not write stay visible (retry parts) and are written on the retry."""
        spec = table_spec("stocks", "trades", ())
        real = storage.parquet.write_parquet_atomically
        failures = [StorageError("disk full")]

        def flaky(*args: Any, **kwargs: Any) -> None:
            if failures:
                raise failures.pop()
            real(*args, **kwargs)

        monkeypatch.setattr(storage.parquet, "write_parquet_atomically", flaky)
        seen: list[int] = []

        async def main() -> None:
            async with scratch_dataset(tmp_path) as dataset:
                writer = dataset.writer("stocks", "trades")
                await writer.put_table(spec.to_table([trade("A", "2024-07-01T10:00:00Z", 4)]), 1)
                assert not await writer.seal()
                seen.append(sum(t.num_rows for t in writer.retry_parts()))
                assert await writer.seal()

        anyio.run(main)
        assert seen == [1]
        (path,) = files(tmp_path)
        assert pq.read_table(path)["trade_id"].to_pylist() == [4]


class TestCompactBuffer:
    """Buffered records become Arrow every `COMPACT_ROWS`.

    A table held for `roll_seconds` (bars, anomalies) must not keep ~1 KB of Python objects a row.
    """

    def test_records_past_the_chunk_are_held_as_arrow(self, tmp_path: Path) -> None:
        held: list[tuple[int, list[int]]] = []
        count = COMPACT_ROWS + 5

        async def main() -> None:
            async with scratch_dataset(tmp_path) as dataset:
                writer = dataset.writer("stocks", "trades")
                for i in range(count):
                    await writer.put([trade("A", "2024-07-01T10:00:00Z", i)])
                held.append(
                    (len(writer.buffered_records()), [t.num_rows for t in writer.buffered_tables()])
                )

        anyio.run(main)
        assert held == [(5, [COMPACT_ROWS])]
        (path,) = files(tmp_path)
        assert pq.read_table(path)["trade_id"].to_pylist() == list(range(count))

    def test_a_record_refused_while_compacting_is_handed_over_at_the_seal(
        self, tmp_path: Path
    ) -> None:
        refused: list[list[int]] = []

        async def on_refused(stream: str, table: str, records: list[tuple[object, str]]) -> None:
            refused.append([r.i for r, _ in records])  # type: ignore[attr-defined]

        records = [trade("A", "2024-07-01T10:00:00Z", i) for i in range(COMPACT_ROWS)]
        records[10] = trade("A", "2024-07-01T25:61:00Z", 10)

        async def main() -> None:
            async with scratch_dataset(tmp_path, on_refused=on_refused) as dataset:
                writer = dataset.writer("stocks", "trades")
                await writer.put(records)
                assert writer.buffered_records() == []
                assert writer.buffered_rows == COMPACT_ROWS - 1

        anyio.run(main)
        assert refused == [[10]]
        (path,) = files(tmp_path)
        assert pq.read_table(path).num_rows == COMPACT_ROWS - 1


def bulk_of(records: list[StockTrade]) -> BulkRows:
    """A flush's trades as the router hands them to the writer (`Grouped.finish`)."""
    pending = Arrivals()
    for record in records:
        pending.add(record, record.S)
    return group_flush({"trades": pending}, {"trades"}, keyed=True).bulk["trades"]


class TestBulk:
    def test_flushes_put_in_bulk_are_converted_a_thousand_rows_at_a_time(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Parts are joined until `BULK_ROWS`, then converted at once; the rest at the seal.

        Each part has its own symbols' dictionary; the file has every row, sorted.
        """
        converted: list[int] = []
        real = BulkRows.to_table

        def counted(rows: BulkRows, converter: Any) -> pa.Table:
            converted.append(len(rows))
            return real(rows, converter)

        monkeypatch.setattr(BulkRows, "to_table", counted)
        half = BULK_ROWS // 2
        parts = [
            [trade(s, f"2024-07-01T10:00:{i % 60:02d}Z", n * half + i) for i in range(half)]
            for n, s in enumerate(("B", "A", "C"))
        ]
        seen: list[int] = []

        async def main() -> None:
            async with scratch_dataset(tmp_path) as dataset:
                writer = dataset.writer("stocks", "trades")
                for part in parts:
                    await writer.put_bulk(bulk_of(part))
                seen.extend(converted)
                seen.append(writer.buffered_rows)
                seen.append(sum(t.num_rows for t in writer.buffered_tables()))

        anyio.run(main)
        assert seen == [BULK_ROWS, 3 * half, 3 * half]  # the third part converted when read
        assert converted == [BULK_ROWS, half]
        (path,) = files(tmp_path)
        table = pq.read_table(path)
        assert table["symbol"].to_pylist() == ["A"] * half + ["B"] * half + ["C"] * half
        assert sorted(table["trade_id"].to_numpy().tolist()) == list(range(3 * half))

    def test_a_bulk_record_that_does_not_convert_is_refused_alone(self, tmp_path: Path) -> None:
        """Should the joined rows not convert, they go record by record: the bad one refused."""
        refused: list[list[int]] = []

        async def on_refused(stream: str, table: str, records: list[tuple[object, str]]) -> None:
            refused.append([r.i for r, _ in records])  # type: ignore[attr-defined]

        records = [trade("A", "2024-07-01T10:00:00Z", i) for i in range(5)]
        bad: Any = [7]  # conditions are text: Arrow refuses this record's
        records[2] = StockTrade(S="A", t="2024-07-01T10:00:00Z", i=2, x="V", p=1.0, s=1.0, c=bad)

        async def main() -> None:
            async with scratch_dataset(tmp_path, on_refused=on_refused) as dataset:
                await dataset.writer("stocks", "trades").put_bulk(bulk_of(records))

        anyio.run(main)
        assert refused == [[2]]
        (path,) = files(tmp_path)
        assert pq.read_table(path)["trade_id"].to_pylist() == [0, 1, 3, 4]
