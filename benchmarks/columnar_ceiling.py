"""How fast can one Python core carry trades from wire to Parquet? The ceiling under the daemon.

The daemon's stages called in a plain loop, with no event loop, symbol tasks or bookkeeping: the
journal (the real `SegmentWriter`, fsync per batch of 1,024 frames), decode, grouping by symbol,
`SymbolPipeline.on_trades` per symbol, and 250k-row Parquet files written as the writers write
them (`prepare`, `write_parquet_atomically`). Two ways to decode:

- `msgspec`: the daemon's own path: `FrameDecoder` structs per frame, the router's flush
  (`build_batches`) reading their fields into the pipeline's columns and the trades table.
- `arrow`: no message objects at all: each batch of frames is reshaped to newline-delimited JSON
  and parsed by pyarrow's JSON reader straight into columns (timestamps included).

    .venv/bin/python -m benchmarks.columnar_ceiling [--ticks 1000000] [--symbols 200]
        [--decode msgspec|arrow|both]

Compare with `ingest bench --stage e2e --rate 0` on the same workload: what the daemon adds to
the msgspec figure is its own machinery; what msgspec adds to the arrow figure is the cost of
message objects; the arrow figure is what is left without them.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.json as pj

from ingest.batch import Arrivals, build_batches
from ingest.bench.workload import Workload, make_workload
from ingest.config import PipelineSettings, load_settings
from ingest.logconfig import configure_logging
from ingest.pipeline import SymbolPipeline
from storage.journal import SegmentWriter
from storage.parquet import prepare, write_parquet_atomically
from storage.schemas import STRINGS, TIMESTAMP, MarketConverter, table_spec
from streams.base import Frame
from streams.messages import FrameDecoder

if TYPE_CHECKING:
    from collections.abc import Callable

JOURNAL_BATCH = 1024
"""Frames a journal append covers: the intake's `queue_size` when saturated."""
FILE_ROWS = 250_000
"""Rows of a sealed trades file, as in the daemon's run."""

_WIRE_FIELDS: list[pa.Field[Any]] = [
    pa.field("S", pa.string()),
    pa.field("i", pa.int64()),
    pa.field("x", pa.string()),
    pa.field("p", pa.float64()),
    pa.field("s", pa.float64()),
    pa.field("c", STRINGS),
    pa.field("t", TIMESTAMP),
    pa.field("z", pa.string()),
]
_WIRE = pa.schema(_WIRE_FIELDS)
_READ = pj.ReadOptions(use_threads=False, block_size=1 << 26)
_PARSE = pj.ParseOptions(explicit_schema=_WIRE, unexpected_field_behavior="ignore")

Columns = tuple[pa.Table, np.ndarray[Any, Any], list[tuple[str, slice]]]
"""A batch's trades table, its rows' order by symbol, and each symbol's slice of that order."""


def decode_msgspec(frames: list[bytes], recv_ns: list[int]) -> Columns:
    decoder = FrameDecoder("stocks")
    pending = {"trades": Arrivals()}
    for raw, recv in zip(frames, recv_ns, strict=True):
        for message in decoder.decode(raw, recv).messages:
            pending["trades"].add(message, message.S)  # type: ignore[union-attr]
    converter = table_spec("stocks", "trades", ()).to_table
    assert isinstance(converter, MarketConverter)
    flush = build_batches(pending, {"trades"}, keyed=True)
    table = flush.bulk["trades"].to_table(converter)
    order = np.concatenate([b.tables["trades"].parts[0][1] for b in flush.batches.values()])
    slices, start = [], 0
    for symbol, batch in flush.batches.items():
        slices.append((symbol, slice(start, start + len(batch.price))))
        start += len(batch.price)
    return table, order, slices


def decode_arrow(frames: list[bytes], recv_ns: list[int]) -> Columns:
    lines = b"\n".join([raw[1:-1].replace(b"},{", b"}\n{") for raw in frames])
    wire = pj.read_json(
        cast("IO[bytes]", pa.BufferReader(lines)), read_options=_READ, parse_options=_PARSE
    )
    per_frame = [raw.count(b'"T":') for raw in frames]
    symbols = wire["S"].combine_chunks().dictionary_encode()
    rows = wire.num_rows
    table = pa.table(
        {
            "symbol": symbols,
            "ts": wire["t"],
            "price": wire["p"],
            "size": wire["s"],
            "trade_id": wire["i"],
            "exchange": wire["x"],
            "conditions": wire["c"],
            "tape": wire["z"],
            "taker_side": pa.nulls(rows, pa.string()),
            "backfilled": pa.array(np.zeros(rows, np.bool_)),
            "recv_ts": pa.array(np.repeat(recv_ns, per_frame), TIMESTAMP),
        }
    )
    codes = symbols.indices.to_numpy()
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    starts, ends = np.r_[0, bounds], np.r_[bounds, rows]
    names = symbols.dictionary.to_pylist()
    slices = [
        (names[codes[order[a]]], slice(a, b))
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True)
    ]
    return table, order, slices


DECODERS: dict[str, Callable[[list[bytes], list[int]], Columns]] = {
    "msgspec": decode_msgspec,
    "arrow": decode_arrow,
}


def run(workload: Workload, decode: str, pipeline: PipelineSettings, scratch: Path) -> None:
    phases = dict.fromkeys(("journal", "decode", "pipeline", "parquet"), 0.0)
    journal = SegmentWriter(scratch / "journal", "bench")
    pipelines: dict[str, SymbolPipeline] = {}
    spec = table_spec("stocks", "trades", ())
    buffered: list[pa.Table] = []
    rows = files = 0
    started = mark = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[phase] += now - mark
        mark = now

    for first in range(0, len(workload.frames), JOURNAL_BATCH):
        raws = workload.frames[first : first + JOURNAL_BATCH]
        recv = [time.time_ns()] * len(raws)
        journal.append([Frame("stocks", r, [], raw=b) for r, b in zip(recv, raws, strict=True)])
        lap("journal")
        table, order, slices = DECODERS[decode](raws, recv)
        ts = table["ts"].combine_chunks().cast(pa.int64()).to_numpy()[order]
        price = table["price"].to_numpy()[order]
        size = table["size"].to_numpy()[order]
        lap("decode")
        for symbol, part in slices:
            state = pipelines.get(symbol)
            if state is None:
                state = pipelines[symbol] = SymbolPipeline(symbol, pipeline)
            state.on_trades(ts[part], price[part], size[part])
        lap("pipeline")
        buffered.append(table)
        rows += table.num_rows
        if rows >= FILE_ROWS or first + JOURNAL_BATCH >= len(workload.frames):
            sealed = prepare(pa.concat_tables(buffered, promote_options="permissive"), spec)
            write_parquet_atomically(
                sealed, scratch / "trades", f"{files}.parquet", compression="zstd", fsync=True
            )
            buffered, rows, files = [], 0, files + 1
        lap("parquet")
    journal.close()
    elapsed = time.perf_counter() - started
    print(f"{decode:8s} {workload.ticks / elapsed:>10,.0f} ticks/s", end="")
    print("".join(f"  {p} {t / workload.ticks * 1e6:.2f}" for p, t in phases.items()), "µs/tick")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=1_000_000)
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--decode", choices=[*DECODERS, "both"], default="both")
    args = parser.parse_args()
    configure_logging(level=logging.WARNING)
    settings = load_settings(None)
    workload = make_workload(args.ticks, args.symbols)
    print(f"{args.ticks:,} stocks trades over {args.symbols} symbols, one core, no event loop")
    for decode in DECODERS if args.decode == "both" else [args.decode]:
        with tempfile.TemporaryDirectory() as scratch:
            run(workload, decode, settings.pipeline, Path(scratch))


if __name__ == "__main__":
    main()
