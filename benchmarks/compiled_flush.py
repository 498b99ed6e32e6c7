"""What a compiled flush would cost on this machine: the same stand-in work in C and in numpy.

The daemon's one-frame flush costs ~0.55 ms of CPU back to back and 1.6-2.4 ms once the caches
have gone cold between frames (`benchmarks.flush_cost --gap-ms`), which is what keeps p99 above
2 ms at every offered rate (docs/performance.md, A cold flush). Reordering its ~2,000 Python,
numpy and Arrow calls will not shrink that footprint; one compiled pass over the flush's columns
and the symbols' state arrays would. This measures how far, before anyone writes that kernel.

The stand-in (`compiled_flush.c`, and `flush_numpy` here with the same results): group a flush's
trades by symbol, then per trade a z-score check against its symbol's last 20 prices, the
session's volume sums and one series of time bars. It is a fraction of the daemon's flush (no
Arrow conversion, one bar type, no indicators, no corrections memory), so read the two columns
against each other and against `flush_cost`, not as a promise. The C file is compiled here with
the machine's C compiler into a temporary directory, and called through ctypes; nothing of it is
part of the daemon.

    .venv/bin/python -m benchmarks.compiled_flush [--symbols 200] [--per-frame 50]
        [--frames 400] [--gap-ms 0,1,5,25] [--busy]
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

WINDOW = 20
"""Prices in each symbol's anomaly window (`W` in the C file)."""
Z_LIMIT = 4.0
BAR_NS = 60_000_000_000
SATURATED = 65_536
"""Trades in a saturated flush (the router's `BATCH_MESSAGES`)."""

_SOURCE = Path(__file__).with_name("compiled_flush.c")

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(slots=True)
class Book:
    """Every symbol's state, in arrays, as the C kernel takes it."""

    window: F64
    filled: I64
    cum_v: F64
    cum_pv: F64
    open: F64
    high: F64
    low: F64
    close: F64
    vol: F64
    pv: F64
    count: I64
    start: I64

    @classmethod
    def empty(cls, symbols: int) -> Book:
        """No trade seen yet: windows empty, no bar open."""
        zeros: dict[str, Any] = {f.name: np.zeros(symbols) for f in fields(cls)}
        zeros["window"] = np.zeros((symbols, WINDOW))
        for name in ("filled", "count", "start"):
            zeros[name] = np.zeros(symbols, np.int64)
        return cls(**zeros)

    def arrays(self) -> list[npt.NDArray[np.float64] | npt.NDArray[np.int64]]:
        """In the C kernel's argument order."""
        return [getattr(self, f.name) for f in fields(self)]


@dataclass(frozen=True, slots=True)
class Frame:
    """One flush's trades, in arrival order."""

    codes: npt.NDArray[np.int32]
    ts: I64
    price: F64
    size: F64


def frames(count: int, per_frame: int, symbols: int, seed: int = 1) -> list[Frame]:
    """`count` flushes of `per_frame` trades, 1 ms apart, each symbol a random walk."""
    rng = np.random.default_rng(seed)
    walk = np.full(symbols, 100.0)
    out = []
    t0 = 1_700_000_000_000_000_000
    for k in range(count):
        codes = rng.integers(0, symbols, per_frame).astype(np.int32)
        steps = rng.standard_normal(per_frame) * 0.05
        np.add.at(walk, codes, steps)
        price = walk[codes] + steps
        spikes = rng.random(per_frame) < 0.002
        price[spikes] *= 1.5
        ts = t0 + (k * per_frame + np.arange(per_frame, dtype=np.int64)) * 1_000_000
        size = rng.integers(1, 500, per_frame).astype(np.float64)
        out.append(Frame(codes, ts, price, size))
    return out


def flush_numpy(book: Book, frame: Frame) -> tuple[int, npt.NDArray[np.uint8]]:
    """The C kernel's work in numpy calls, as the daemon's flush does it: bars closed, flags."""
    codes, n = frame.codes, len(frame.codes)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(book.filled))
    touched = np.flatnonzero(counts)
    runs = counts[touched]
    ends = np.cumsum(runs)
    starts = ends - runs
    price, size, ts = frame.price[order], frame.size[order], frame.ts[order]
    run_of = np.repeat(np.arange(len(touched)), runs)
    within = np.arange(n) - starts[run_of]

    # Each run's prices after its symbol's window, then the W prices before every trade.
    segment = np.arange(len(touched)) * WINDOW + starts
    extended = np.empty(len(touched) * WINDOW + n)
    extended[(segment[:, None] + np.arange(WINDOW)).ravel()] = book.window[touched].ravel()
    extended[segment[run_of] + WINDOW + within] = price
    views = sliding_window_view(extended, WINDOW)
    before = views[segment[run_of] + within]
    mean = before.sum(axis=1) / WINDOW
    var = (before * before).sum(axis=1) / WINDOW - mean * mean
    full = book.filled[touched][run_of] + within >= WINDOW
    flags = full & (var > 0.0) & (np.abs(price - mean) > Z_LIMIT * np.sqrt(np.maximum(var, 0)))
    anomaly = np.empty(n, np.uint8)
    anomaly[order] = flags
    book.window[touched] = views[segment + runs]
    book.filled[touched] = np.minimum(WINDOW, book.filled[touched] + runs)
    book.cum_v[touched] += np.add.reduceat(size, starts)
    book.cum_pv[touched] += np.add.reduceat(price * size, starts)

    # Time bars: a segment per (symbol, bucket); a run's first may extend the open bar.
    bucket = ts - ts % BAR_NS
    new = np.ones(n, np.bool_)
    new[1:] = (bucket[1:] != bucket[:-1]) | (run_of[1:] != run_of[:-1])
    seg_starts = np.flatnonzero(new)
    seg_run = run_of[seg_starts]
    symbol = touched[seg_run]
    first = seg_starts == starts[seg_run]
    was_open = book.count[symbol] > 0
    extends = first & was_open & (bucket[seg_starts] == book.start[symbol])
    closed = len(seg_starts) - len(touched) + int(np.count_nonzero(first & was_open & ~extends))
    last = np.flatnonzero(np.append(seg_run[1:] != seg_run[:-1], True))
    s, at, ext = symbol[last], seg_starts[last], extends[last]
    seg_ends = np.append(seg_starts[1:], n)[last]
    high = np.maximum.reduceat(price, seg_starts)[last]
    low = np.minimum.reduceat(price, seg_starts)[last]
    vol = np.add.reduceat(size, seg_starts)[last]
    pv = np.add.reduceat(price * size, seg_starts)[last]
    book.open[s] = np.where(ext, book.open[s], price[at])
    book.high[s] = np.where(ext, np.maximum(book.high[s], high), high)
    book.low[s] = np.where(ext, np.minimum(book.low[s], low), low)
    book.close[s] = price[seg_ends - 1]
    book.vol[s] = np.where(ext, book.vol[s] + vol, vol)
    book.pv[s] = np.where(ext, book.pv[s] + pv, pv)
    book.count[s] = np.where(ext, book.count[s], 0) + (seg_ends - at)
    book.start[s] = bucket[at]
    return closed, anomaly


class Kernel:
    """`compiled_flush.c` built and loaded; `prepare` takes the pointers outside any timing."""

    def __init__(self, library: Path, symbols: int) -> None:
        self._lib = ctypes.CDLL(str(library))
        self._lib.flush.restype = ctypes.c_int64
        pointer, integer = ctypes.c_void_p, ctypes.c_int64
        state = 2 + len(fields(Book))  # counts and order, then the book's arrays
        argtypes: list[Any] = [integer, *[pointer] * 4, integer, *[pointer] * state]
        self._lib.flush.argtypes = [*argtypes, integer, ctypes.c_double, pointer]
        self._counts = np.zeros(symbols, np.int64)
        self.symbols = symbols

    def prepare(
        self, book: Book, frame: Frame
    ) -> tuple[tuple[int | float, ...], tuple[I64, npt.NDArray[np.uint8]]]:
        """The call's arguments, and the arrays it writes that are not the book's.

        The caller keeps both, the book and the frame alive until the call is made.
        """
        n = len(frame.codes)
        order, anomaly = np.empty(n, np.int64), np.zeros(n, np.uint8)
        inputs = (frame.codes, frame.ts, frame.price, frame.size)
        state = [self._counts, order, *book.arrays()]
        args = (
            n,
            *(a.ctypes.data for a in inputs),
            self.symbols,
            *(a.ctypes.data for a in state),
            BAR_NS,
            Z_LIMIT,
            anomaly.ctypes.data,
        )
        return args, (order, anomaly)

    def call(self, args: tuple[int | float, ...]) -> int:
        """One flush; the bars it closed."""
        return int(self._lib.flush(*args))


@contextmanager
def built(symbols: int) -> Iterator[Kernel]:
    """The kernel compiled with the machine's C compiler, for the length of the block."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        msg = "compiled_flush: no C compiler (cc or gcc) on PATH"
        raise SystemExit(msg)
    with tempfile.TemporaryDirectory(prefix="compiled-flush-") as tmp:
        library = Path(tmp) / "compiled_flush.so"
        command = [compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(_SOURCE), "-lm"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            msg = f"compiled_flush: {compiler} failed: {done.stderr.strip()}"
            raise SystemExit(msg)
        yield Kernel(library, symbols)


def _wait(seconds: float, busy: bool, scratch: F64) -> None:
    if not seconds:
        return
    if not busy:
        time.sleep(seconds)
        return
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        scratch[::8] += 1.0  # other work touching memory, as the loop does between frames


@dataclass(frozen=True)
class Costs:
    """CPU microseconds per flush after the warm-up, each way."""

    compiled: list[float]
    numpy: list[float]


def measure(
    kernel: Kernel, per_frame: int, count: int, gap: float = 0.0, busy: bool = False
) -> Costs:
    """Each flush both ways, interleaved, each after `gap` seconds asleep (or busy)."""
    warm = max(1, WINDOW * kernel.symbols // per_frame + 1)
    batch = frames(warm + count, per_frame, kernel.symbols)
    c_book, np_book = Book.empty(kernel.symbols), Book.empty(kernel.symbols)
    prepared = [kernel.prepare(c_book, f) for f in batch]
    scratch = np.zeros(1_000_000)
    compiled: list[float] = []
    vectorised: list[float] = []
    for k, (frame, (args, _written)) in enumerate(zip(batch, prepared, strict=True)):
        pause = gap if k >= warm else 0.0
        _wait(pause, busy, scratch)
        started = time.thread_time_ns()
        kernel.call(args)
        compiled.append((time.thread_time_ns() - started) / 1_000)
        _wait(pause, busy, scratch)
        started = time.thread_time_ns()
        flush_numpy(np_book, frame)
        vectorised.append((time.thread_time_ns() - started) / 1_000)
    return Costs(compiled[warm:], vectorised[warm:])


def per_trade_saturated(kernel: Kernel, count: int = 8) -> tuple[float, float]:
    """Nanoseconds a trade in flushes of `SATURATED` trades: compiled, numpy."""
    batch = frames(count, SATURATED, kernel.symbols, seed=2)
    c_book, np_book = Book.empty(kernel.symbols), Book.empty(kernel.symbols)
    prepared = [kernel.prepare(c_book, f) for f in batch]
    costs = []
    for run in (
        lambda: [kernel.call(a) for a, _ in prepared],
        lambda: [flush_numpy(np_book, f) for f in batch],
    ):
        started = time.perf_counter_ns()
        run()
        costs.append((time.perf_counter_ns() - started) / (count * SATURATED))
    return costs[0], costs[1]


def _line(label: str, values: list[float]) -> str:
    p99 = float(np.percentile(values, 99))
    return f"{label:6} median {statistics.median(values):8.1f} µs  p99 {p99:8.1f} µs"


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--per-frame", type=int, default=50, help="trades a flush")
    parser.add_argument("--frames", type=int, default=400, help="timed flushes per gap")
    parser.add_argument("--gap-ms", default="0,1,5,25", help="idle before each flush, a list")
    parser.add_argument("--busy", action="store_true", help="busy-wait the gap, not sleep")
    args = parser.parse_args(argv)
    try:
        gaps = [float(g) for g in args.gap_ms.split(",")]
    except ValueError:
        parser.error(f"--gap-ms: not a list of milliseconds: {args.gap_ms!r}")
    with built(args.symbols) as kernel:
        out(
            f"compiled flush stand-in: {args.symbols} symbols, {args.per_frame} trades a "
            f"flush, {args.frames} flushes a gap, CPU time of the thread"
        )
        for gap in gaps:
            costs = measure(kernel, args.per_frame, args.frames, gap / 1000, args.busy)
            how = "busy" if args.busy else "asleep"
            out(f"  gap {gap:5g} ms {how:6}  " + _line("C", costs.compiled))
            out(f"  {'':20}" + _line("numpy", costs.numpy))
        compiled, vectorised = per_trade_saturated(kernel)
        out(
            f"  saturated ({SATURATED:,} trades a flush): C {compiled:.0f} ns a trade, "
            f"numpy {vectorised:.0f} ns a trade"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
