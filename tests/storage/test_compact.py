"""`ingest compact`: closed partitions merged into sorted files, atomically, even when killed."""

from __future__ import annotations

import dataclasses
import functools
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.app import run_daemon
from ingest.cli import main
from ingest.config import StorageSettings, settings_from_mapping
from storage.compact import COMPACT_DIR, STEPS, compact_dataset, content_checksum, describe
from storage.parquet import open_dataset
from streams.messages import NewsArticle
from streams.sim import SimSource
from tests.storage.daemon import ROOT

if TYPE_CHECKING:
    from pathlib import Path

    from ingest.config import Settings, StreamName

TABLES = ("trades", "quotes", "bars")


def run_stocks(settings: Settings) -> Path:
    """Seal 1.2 s of sim stocks (2024-07-01) into many small files."""
    small = settings.replace(
        ingest=dataclasses.replace(settings.ingest, streams=("stocks",)),
        storage=dataclasses.replace(settings.storage, roll_seconds=0.25),
    )
    source = SimSource(small, ("stocks",))
    anyio.run(functools.partial(run_daemon, small, source, duration=1.2))
    return settings.ingest.data_dir


def write_records(root: Path, stream: StreamName, table: str, records: list[Any], n: int) -> None:
    """Seal `records` into one file of `stream/table`, as writer `n`."""

    async def main() -> None:
        async with open_dataset(
            root, StorageSettings(), writer_id=f"w{n}", metadata={}, indicator_columns=()
        ) as dataset:
            await dataset.writer(stream, table).put(records)

    anyio.run(main)


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small-file dataset per module; tests work on copies of it."""
    base = tmp_path_factory.mktemp("sealed")
    raw = {
        "ingest": {"data_dir": str(base / "data"), "streams": ["stocks"]},
        "sim": {"ticks_per_second": 50, "start": "2024-07-01T14:30:00Z"},
        "server": {"listen": ""},
    }
    return run_stocks(settings_from_mapping(raw))


@pytest.fixture
def root(sealed: Path, tmp_path: Path) -> Path:
    """A fresh copy of the small-file dataset."""
    copy = tmp_path / "data"
    shutil.copytree(sealed, copy)
    return copy


def visible(root: Path, table: str) -> tuple[int, list[Any], int]:
    """What a DuckDB reader sees of `stocks/<table>`: rows, per-column hash sums, files."""
    import duckdb

    glob = f"{root}/stocks/{table}/**/*.parquet"
    files = len(list(root.glob(f"stocks/{table}/**/*.parquet")))
    (row,) = (
        duckdb.connect()
        .execute(
            "select count(*), sum(hash(columns(*))) "
            f"from read_parquet('{glob}', union_by_name=true)"
        )
        .fetchall()
    )
    return int(row[0]), list(row[1:]), files


def snapshot(root: Path) -> dict[str, tuple[int, list[Any]]]:
    """Rows and column hashes of every stocks table, as a reader sees them."""
    return {p.name: visible(root, p.name)[:2] for p in sorted((root / "stocks").iterdir())}


CRASH = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from storage.compact import compact_dataset

    def crash(step):
        if step == sys.argv[2]:
            os._exit(70)

    compact_dataset(Path(sys.argv[1]), on_step=crash)
    """
)


class TestCompaction:
    def test_merges_each_closed_partition_into_one_sorted_file(self, root: Path) -> None:
        """Many files become one per partition, rows sorted by (symbol, ts), content equal."""
        before = snapshot(root)
        assert visible(root, "trades")[2] > 2
        results = compact_dataset(root)
        assert {r.table for r in results} >= set(TABLES)
        assert snapshot(root) == before
        for table in TABLES:
            (path,) = root.glob(f"stocks/{table}/date=*/*.parquet")
            rows = pq.read_table(path)
            keys = list(zip(rows["symbol"].to_pylist(), rows["ts"].to_pylist(), strict=True))
            assert keys == sorted(keys)
        assert [p.name for p in (root / COMPACT_DIR).iterdir()] == [".lock"]

    def test_checksum_is_equal_before_and_after(self, root: Path) -> None:
        """The reported checksum is the content's before the merge and after it."""
        files = sorted(root.glob("stocks/trades/date=*/*.parquet"))
        before = content_checksum(pa.concat_tables([pq.read_table(f) for f in files]))
        (result,) = [r for r in compact_dataset(root) if r.table == "trades"]
        (merged,) = root.glob("stocks/trades/date=*/*.parquet")
        assert result.checksum == before == content_checksum(pq.read_table(merged))
        assert result.files_before == len(files)

    def test_open_partition_is_left_alone(self, root: Path) -> None:
        """A day not yet ended `compact_after` ago is not touched."""
        files = sorted(root.glob("stocks/trades/date=*/*.parquet"))
        evening = datetime(2024, 7, 1, 23, 0, tzinfo=UTC)
        assert compact_dataset(root, now=evening) == []
        next_morning = datetime(2024, 7, 2, 0, 30, tzinfo=UTC)
        assert compact_dataset(root, now=next_morning, compact_after=3600) == []
        assert sorted(root.glob("stocks/trades/date=*/*.parquet")) == files

    def test_table_and_date_select_partitions(self, root: Path) -> None:
        """--table and --date limit the work; a second run has nothing left to do."""
        assert compact_dataset(root, day="2024-07-02") == []
        (only,) = compact_dataset(root, table="stocks/trades", day="2024-07-01")
        assert (only.stream, only.table) == ("stocks", "trades")
        assert len(list(root.glob("stocks/quotes/date=*/*.parquet"))) > 1
        assert {r.table for r in compact_dataset(root, table="quotes")} == {"quotes"}

    def test_file_sealed_during_compaction_stays_visible(self, root: Path) -> None:
        """A file renamed into the partition meanwhile is carried over, not swapped away."""
        partition = next(root.glob("stocks/trades/date=*"))
        extra = pq.read_table(next(partition.glob("*.parquet"))).slice(0, 3)
        rows = visible(root, "trades")[0]

        def seal_meanwhile(step: str) -> None:
            if step == "staged" and "trades" in str(partition):
                pq.write_table(extra, partition / "part-late.parquet")

        compact_dataset(root, table="trades", on_step=seal_meanwhile)
        assert visible(root, "trades")[0] == rows + 3
        assert (partition / "part-late.parquet").exists()

    def test_cli(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """`ingest compact --data-dir DIR --table T --date D` prints one line per partition."""
        code = main(
            ["compact", "--data-dir", str(root), "--table", "trades", "--date", "2024-07-01"]
        )
        assert code == 0
        out = capsys.readouterr().out
        assert "stocks/trades date=2024-07-01:" in out
        assert " -> 1, " in out

    def test_an_edited_article_keeps_its_last_version(self, tmp_path: Path) -> None:
        """Versions of one news article (same id, later `updated_at`) become its newest one."""

        def article(i: int, updated: str, headline: str) -> NewsArticle:
            return NewsArticle(
                id=i,
                headline=headline,
                created_at="2024-07-01T14:00:00Z",
                updated_at=updated,
                symbols=["AAPL"],
                recv_ns=1,
            )

        batches = [
            [article(1, "2024-07-01T14:00:00Z", "first"), article(2, "2024-07-01T14:00:00Z", "x")],
            [article(1, "2024-07-01T15:00:00Z", "edited")],
            [article(1, "2024-07-01T16:00:00Z", "edited again")],
        ]
        for n, batch in enumerate(batches):  # one file each, as from three seals
            write_records(tmp_path, "news", "articles", batch, n)
        (result,) = compact_dataset(tmp_path, table="articles")
        (path,) = tmp_path.glob("news/articles/date=2024-07-01/*.parquet")
        rows = pq.read_table(path).sort_by("id")
        assert rows["id"].to_pylist() == [1, 2]
        assert rows["headline"].to_pylist() == ["edited again", "x"]
        assert (result.rows, result.superseded) == (2, 2)
        assert "2 earlier versions replaced" in describe([result])

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            pytest.param(["--date", "yesterday"], "--date: 'yesterday' is invalid", id="date"),
            pytest.param(["--table", "trade"], "--table: 'trade' is invalid", id="table"),
        ],
    )
    def test_cli_refuses_bad_arguments(
        self, tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A bad --date or --table is a usage error naming the flag (exit 2)."""
        assert main(["compact", "--data-dir", str(tmp_path), *args]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
class TestCrashAtEachStep:
    @pytest.mark.parametrize("step", STEPS)
    def test_killed_compaction_leaves_old_or_new_and_is_repaired(
        self, root: Path, step: str
    ) -> None:
        """Killed right after `step`: readers see the same rows (old or new files, never both).

        The next compaction repairs `_compact/` and finishes the job.
        """
        before = snapshot(root)
        files_before = {p.name: visible(root, p.name)[2] for p in (root / "stocks").iterdir()}
        killed = subprocess.run(
            [sys.executable, "-c", CRASH, str(root), step],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert killed.returncode == 70, killed.stderr
        assert snapshot(root) == before
        swapped = step in ("exchanged", "cleaned")
        # Tables are compacted in name order: the kill hit the first one with files to merge.
        first = min(name for name, files in files_before.items() if files > 1)
        assert visible(root, first)[2] == (1 if swapped else files_before.get(first))
        assert any((root / COMPACT_DIR).iterdir()) or step == "cleaned"
        assert main(["compact", "--data-dir", str(root)]) == 0
        assert snapshot(root) == before
        assert all(visible(root, t)[2] == 1 for t in TABLES)
        assert [p.name for p in (root / COMPACT_DIR).iterdir()] == [".lock"]

    def test_daemon_start_tidies_an_interrupted_compaction(self, settings: Settings) -> None:
        """What a killed compaction left behind is removed when the daemon starts."""
        root = run_stocks(settings)
        killed = subprocess.run(
            [sys.executable, "-c", CRASH, str(root), "exchanged"],
            cwd=ROOT,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert killed.returncode == 70
        before = snapshot(root)
        run_stocks(settings)
        assert [p.name for p in (root / COMPACT_DIR).iterdir()] == [".lock"]
        assert snapshot(root)["trades"][0] >= before["trades"][0]


def test_another_compaction_running_is_refused(tmp_path: Path) -> None:
    """Two compactions never run at once on one dataset."""
    from ingest.errors import StorageError
    from storage.atomic import table_lock

    (tmp_path / COMPACT_DIR).mkdir()
    with table_lock(tmp_path / COMPACT_DIR, shared=False), pytest.raises(StorageError):
        compact_dataset(tmp_path)
