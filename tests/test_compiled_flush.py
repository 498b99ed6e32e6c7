"""The compiled-flush benchmark's two stand-ins do the same work, and that work is what it says."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pytest

from benchmarks.compiled_flush import (
    BAR_NS,
    WINDOW,
    Z_LIMIT,
    Book,
    Frame,
    Kernel,
    built,
    flush_numpy,
    frames,
    main,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SYMBOLS = 7


def _reference(book: Book, frame: Frame) -> tuple[int, list[int]]:
    """One trade at a time, as the C file's comment describes the work."""
    closed, flags = 0, [0] * len(frame.codes)
    for s in range(SYMBOLS):
        for i in np.flatnonzero(frame.codes == s):
            p, q, t = float(frame.price[i]), float(frame.size[i]), int(frame.ts[i])
            if book.filled[s] == WINDOW:
                w = [float(x) for x in book.window[s]]
                mean = sum(w) / WINDOW
                var = sum(x * x for x in w) / WINDOW - mean * mean
                flags[i] = int(var > 0 and abs(p - mean) > Z_LIMIT * math.sqrt(var))
            else:
                book.filled[s] += 1
            book.window[s] = np.append(book.window[s][1:], p)
            book.cum_v[s] += q
            book.cum_pv[s] += p * q
            bucket = t - t % BAR_NS
            if book.count[s] == 0 or bucket != book.start[s]:
                closed += int(book.count[s] != 0)
                book.open[s] = book.high[s] = book.low[s] = p
                book.vol[s] = book.pv[s] = 0.0
                book.count[s] = 0
                book.start[s] = bucket
            book.high[s] = max(book.high[s], p)
            book.low[s] = min(book.low[s], p)
            book.close[s] = p
            book.vol[s] += q
            book.pv[s] += p * q
            book.count[s] += 1
    return closed, flags


def _assert_same(a: Book, b: Book) -> None:
    for name, x, y in zip(Book.__slots__, a.arrays(), b.arrays(), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12, err_msg=name)


@pytest.fixture(scope="module")
def kernel() -> Iterator[Kernel]:
    with built(SYMBOLS) as loaded:
        yield loaded


def test_c_numpy_and_one_trade_at_a_time_agree(kernel: Kernel) -> None:
    # 200,000 trades 1 ms apart from 20 s past a minute: three minutes close for every symbol,
    # each inside a flush, and every flush's first trades extend the bars left open.
    batch = frames(50, 4_000, SYMBOLS)
    books = [Book.empty(SYMBOLS) for _ in range(3)]
    closed_total, flagged = 0, 0
    for frame in batch:
        args, (_order, c_flags) = kernel.prepare(books[0], frame)
        c_closed = kernel.call(args)
        np_closed, np_flags = flush_numpy(books[1], frame)
        ref_closed, ref_flags = _reference(books[2], frame)
        assert c_closed == np_closed == ref_closed
        assert c_flags.tolist() == np_flags.tolist() == ref_flags
        closed_total += c_closed
        flagged += int(c_flags.sum())
    _assert_same(books[0], books[2])
    _assert_same(books[1], books[2])
    # The workload exercises every branch: bars closed, anomalies found, windows filled.
    assert batch[0].ts[0] % BAR_NS == 20 * 10**9
    assert closed_total == SYMBOLS * 3
    assert 0 < flagged < 200_000 // 100
    assert books[0].filled.tolist() == [WINDOW] * SYMBOLS


def test_prints_both_ways_for_each_gap() -> None:
    lines: list[str] = []
    main(["--symbols", "20", "--frames", "5", "--gap-ms", "0,1"], out=lines.append)
    assert lines[0].startswith("compiled flush stand-in: 20 symbols, 50 trades a flush")
    assert [line.split()[:2] for line in lines[1:5:2]] == [["gap", "0"], ["gap", "1"]]
    assert all("C      median" in line for line in lines[1:5:2])
    assert all(line.strip().startswith("numpy  median") for line in lines[2:5:2])
    assert lines[5].startswith("  saturated (65,536 trades a flush): C ")


def test_no_compiler_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit, match=r"^compiled_flush: no C compiler \(cc or gcc\) on PATH$"):
        main(["--frames", "1"])
