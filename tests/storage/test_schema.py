"""Schemas in one place, documented, and readable as one dataset across an added column."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from ingest.config import STREAMS, PipelineSettings
from ingest.errors import StorageError
from ingest.pipeline import indicator_columns
from storage.compact import compact_dataset
from storage.schemas import describe_tables, table_spec, tables_of
from streams.messages import StockTrade

DOC = Path(__file__).parent.parent.parent / "docs" / "schema.md"


def trades(first: int, n: int) -> pa.Table:
    spec = table_spec("stocks", "trades", ())
    records = [
        StockTrade(S="AAPL", t=f"2024-07-01T14:30:{i:02d}Z", i=i, x="V", p=1.0 + i, s=1.0)
        for i in range(first, first + n)
    ]
    return spec.to_table(records)


@pytest.fixture
def evolved(tmp_path: Path) -> Path:
    """A partition holding a file of today's schema and one with an added nullable column."""
    partition = tmp_path / "stocks" / "trades" / "date=2024-07-01"
    partition.mkdir(parents=True)
    pq.write_table(trades(0, 3), partition / "part-old.parquet")
    newer = trades(3, 2)
    newer = newer.append_column(pa.field("venue_ts", pa.timestamp("ns", tz="UTC")), newer["ts"])
    pq.write_table(newer, partition / "part-new.parquet")
    return tmp_path


class TestOnePlace:
    def test_docs_show_every_table_as_defined(self) -> None:
        """docs/schema.md carries the generated description of every table, up to date."""
        text = DOC.read_text()
        match = re.search(r"<!-- tables:begin -->\n(.*)<!-- tables:end -->", text, re.S)
        assert match is not None
        expected = describe_tables(indicator_columns(PipelineSettings()))
        regenerate = "regenerate with: python -m storage.schemas"
        assert match.group(1).strip() == expected.strip(), regenerate

    def test_keys_and_watermark_are_columns(self) -> None:
        """Every de-duplication key names a column of its table."""
        for stream in STREAMS:
            for table in tables_of(stream):
                spec = table_spec(stream, table, ("sma_5",))
                names = set(spec.schema.names)
                assert set(spec.keys) <= names, (stream, table)
                assert spec.watermark_column in names
                assert set(spec.sort_by) <= names


class TestEvolution:
    def test_duckdb_reads_both_versions_by_name(self, evolved: Path) -> None:
        """With union_by_name the added column is null in the older file's rows."""
        glob = f"{evolved}/stocks/trades/**/*.parquet"
        rows = (
            duckdb.connect()
            .execute(
                "select trade_id, venue_ts is null from read_parquet("
                f"'{glob}', union_by_name=true, hive_partitioning=true) order by trade_id"
            )
            .fetchall()
        )
        assert rows == [(0, True), (1, True), (2, True), (3, False), (4, False)]

    def test_pyarrow_reads_both_versions_with_the_unified_schema(self, evolved: Path) -> None:
        """A pyarrow dataset over the unified schema reads every row of both files."""
        files = sorted((evolved / "stocks" / "trades").rglob("*.parquet"))
        schema = pa.unify_schemas([pq.read_schema(f) for f in files])
        table = ds.dataset(files, schema=schema).to_table()
        assert table.num_rows == 5
        assert table["venue_ts"].null_count == 3

    def test_compaction_merges_into_the_union_schema(self, evolved: Path) -> None:
        """Compaction writes one file with the added column, old rows null in it."""
        (result,) = compact_dataset(evolved)
        assert (result.files_before, result.rows) == (2, 5)
        (merged,) = (evolved / "stocks" / "trades").rglob("*.parquet")
        table = pq.read_table(merged)
        assert "venue_ts" in table.column_names
        assert table["venue_ts"].null_count == 3

    def test_a_changed_type_is_refused(self, evolved: Path) -> None:
        """A column whose type changed cannot be merged: compaction stops, files untouched."""
        partition = evolved / "stocks" / "trades" / "date=2024-07-01"
        changed = trades(5, 1)
        index = changed.schema.get_field_index("trade_id")
        changed = changed.set_column(index, "trade_id", changed["trade_id"].cast(pa.string()))
        pq.write_table(changed, partition / "part-changed.parquet")
        with pytest.raises(StorageError, match="differ by more than added columns"):
            compact_dataset(evolved)
        assert len(list(partition.glob("*.parquet"))) == 3
