"""A reader querying in a loop while the daemon writes never sees an error or a partial file."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import duckdb
import pytest

from tests.storage.daemon import Daemon, write_config

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.slow
class TestConcurrentReader:
    def test_duckdb_in_a_loop_during_a_run(self, tmp_path: Path) -> None:
        """Files seal every 0.2 s while DuckDB counts them: no error, counts never go down."""
        config = write_config(tmp_path, 'roll_seconds = "0.2s"')
        data = tmp_path / "data"
        daemon = Daemon(tmp_path / "run.log", "run", "--config", str(config))
        errors: list[str] = []
        counts: list[tuple[int, int]] = []
        done = threading.Event()

        def read() -> None:
            con = duckdb.connect()
            trades = f"read_parquet('{data}/stocks/trades/**/*.parquet', hive_partitioning=true)"
            bars = f"read_parquet('{data}/crypto/bars/**/*.parquet', hive_partitioning=true)"
            while not done.is_set():
                if not list(data.glob("crypto/bars/*/*.parquet")):
                    time.sleep(0.01)
                    continue
                try:
                    (row,) = con.execute(
                        f"select (select count(*) from {trades}), "
                        f"(select count(*) from {bars} where volume >= 0)"
                    ).fetchall()
                except duckdb.Error as exc:
                    errors.append(str(exc))
                else:
                    counts.append((int(row[0]), int(row[1])))

        reader = threading.Thread(target=read)
        daemon.wait_for("streams_ready")
        reader.start()
        try:
            time.sleep(3.0)
        finally:
            done.set()
            reader.join(timeout=30)
            code = daemon.stop()
        assert code == 0
        assert errors == []
        assert len(counts) > 20, "the reader hardly ran"
        for column in (0, 1):
            seen = [c[column] for c in counts]
            assert seen == sorted(seen), "a reader saw rows disappear"
        assert counts[-1][0] > counts[0][0], "no file was sealed while reading"
