"""The ceiling benchmark compares like with like: both decoders yield the same trades."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.columnar_ceiling import decode_arrow, decode_msgspec, run
from ingest.bench.workload import make_workload
from ingest.config import PipelineSettings

if TYPE_CHECKING:
    from pathlib import Path

    from benchmarks.columnar_ceiling import Columns

COMPARED = ("symbol", "ts", "price", "size", "trade_id", "exchange", "conditions", "tape")


def _by_symbol(columns: Columns) -> dict[str, pa.Table]:
    table, order, slices = columns
    ordered = table.take(order)
    return {symbol: ordered.slice(part.start, part.stop - part.start) for symbol, part in slices}


def _rows(table: pa.Table) -> list[dict[str, object]]:
    plain = table.select(list(COMPARED)).set_column(0, "symbol", table["symbol"].cast(pa.string()))
    return plain.to_pylist()


def test_both_decoders_yield_the_same_trades_per_symbol() -> None:
    workload = make_workload(3_000, 7)
    recv = [1_700_000_000_000_000_000 + i for i in range(len(workload.frames))]
    arrow = _by_symbol(decode_arrow(workload.frames, recv))
    msgspec = _by_symbol(decode_msgspec(workload.frames, recv))
    assert sorted(arrow) == sorted(msgspec) == sorted(workload.symbols)
    for symbol, rows in arrow.items():
        assert _rows(rows) == _rows(msgspec[symbol])
        np.testing.assert_array_equal(
            rows["recv_ts"].cast(pa.int64()), msgspec[symbol]["recv_ts"].cast(pa.int64())
        )
    # Arrival order within a symbol is what the pipeline is fed.
    first = workload.symbols[int(workload.symbol_index[0])]
    expected = workload.ts[workload.symbol_index == workload.symbol_index[0]]
    np.testing.assert_array_equal(arrow[first]["ts"].cast(pa.int64()).to_numpy(), expected)


@pytest.mark.parametrize("decode", ["msgspec", "arrow"])
def test_a_run_seals_every_trade(
    decode: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workload = make_workload(5_000, 11)
    run(workload, decode, PipelineSettings(), tmp_path)
    written = pq.read_table(tmp_path / "trades")
    assert written.num_rows == workload.ticks
    ids = np.sort(written["trade_id"].to_numpy())
    np.testing.assert_array_equal(ids, np.arange(1, workload.ticks + 1))
    line = capsys.readouterr().out.splitlines()[-1]  # after any log lines
    assert line.startswith(decode)
    assert "ticks/s" in line
    assert "pipeline" in line
