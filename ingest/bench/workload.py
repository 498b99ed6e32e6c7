"""The benchmark's deterministic workload: trades in Alpaca's wire shape, generated up front.

Trades of `symbols` symbols arrive in a seeded random order, 1 ms apart overall, each symbol's
price a geometric random walk rounded to the cent. They are packed ~`per_frame` messages to a frame
exactly as Alpaca sends them: JSON for stocks, MessagePack with timestamp extensions for options.
The same trades are also kept as columns, so the pipeline stage can be fed without decoding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Final, Literal

import msgspec
import numpy as np

from streams.occ import format_occ

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["START_NS", "Workload", "make_workload"]

START_NS: Final = 1_719_844_200_000_000_000  # 2024-07-01 14:30:00 UTC, a regular session open
SPACING_NS: Final = 1_000_000
BenchStream = Literal["stocks", "options"]


@dataclass(frozen=True, slots=True)
class Workload:
    """One benchmark run's input, as wire frames and as columns (same trades, same order)."""

    stream: BenchStream
    frames: list[bytes]
    symbols: list[str]
    symbol_index: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    price: npt.NDArray[np.float64]
    size: npt.NDArray[np.float64]

    @property
    def ticks(self) -> int:
        """Trades in the workload."""
        return len(self.ts)

    @property
    def encoding(self) -> Literal["json", "msgpack"]:
        """How the frames are encoded on the wire."""
        return "msgpack" if self.stream == "options" else "json"


def symbol_names(stream: BenchStream, count: int) -> list[str]:
    """Distinct, valid symbols: tickers for stocks, OCC contracts for options."""
    if stream == "options":
        expiry = date(2024, 7, 19)
        return [format_occ("SPY", expiry, "C" if i % 2 else "P", 400 + i) for i in range(count)]
    return [f"S{i:05d}" for i in range(count)]


def make_workload(
    ticks: int, symbols: int, *, per_frame: int = 50, stream: BenchStream = "stocks", seed: int = 7
) -> Workload:
    """Generate `ticks` trades over `symbols` symbols, framed `per_frame` to a frame."""
    rng = np.random.default_rng(seed)
    names = symbol_names(stream, symbols)
    index = rng.integers(0, symbols, ticks)
    steps = rng.normal(0.0, 2e-4, ticks)
    order = np.argsort(index, kind="stable")
    walk = np.cumsum(steps[order])
    starts = np.searchsorted(index[order], np.arange(symbols))
    walk -= np.repeat(np.concatenate(([0.0], walk))[starts], np.diff(np.append(starts, ticks)))
    base = (
        rng.uniform(20.0, 500.0, symbols) if stream == "stocks" else rng.uniform(1.0, 20.0, symbols)
    )
    price = np.empty(ticks)
    price[order] = np.round(base[index[order]] * np.exp(walk), 2)
    size = rng.integers(1, 200, ticks).astype(np.float64)
    ts = START_NS + np.arange(ticks, dtype=np.int64) * SPACING_NS
    encode = _msgpack_frames if stream == "options" else _json_frames
    frames = encode(names, index, ts, price, size, per_frame)
    return Workload(stream, frames, names, index, ts, price, size)


def _rfc3339(ts: npt.NDArray[np.int64]) -> list[str]:
    text = ts.astype("datetime64[ns]").astype(str)
    return [t + "Z" for t in text.tolist()]


def _json_frames(
    names: list[str],
    index: npt.NDArray[np.int64],
    ts: npt.NDArray[np.int64],
    price: npt.NDArray[np.float64],
    size: npt.NDArray[np.float64],
    per_frame: int,
) -> list[bytes]:
    encode = msgspec.json.Encoder().encode
    stamps = _rfc3339(ts)
    rows = zip(index.tolist(), stamps, price.tolist(), size.tolist(), strict=True)
    messages = [
        {"T": "t", "S": names[s], "i": n, "x": "V", "p": p, "s": q, "c": ["@"], "t": t, "z": "C"}
        for n, (s, t, p, q) in enumerate(rows, 1)
    ]
    return [encode(messages[i : i + per_frame]) for i in range(0, len(messages), per_frame)]


_TIMESTAMP32: Final = struct.Struct(">I")
_TIMESTAMP64: Final = struct.Struct(">Q")
_TIMESTAMP96: Final = struct.Struct(">Iq")


def _timestamp_ext(seconds: int, nanos: int) -> msgspec.msgpack.Ext:
    """The smallest Timestamp form that holds the time, as MessagePack encoders write it.

    Alpaca's Go server among them: 4 bytes for whole seconds, 8 until 2514, else 12.
    """
    if 0 <= seconds < 1 << 34:
        if nanos == 0 and seconds < 1 << 32:
            return msgspec.msgpack.Ext(-1, _TIMESTAMP32.pack(seconds))
        return msgspec.msgpack.Ext(-1, _TIMESTAMP64.pack(nanos << 34 | seconds))
    return msgspec.msgpack.Ext(-1, _TIMESTAMP96.pack(nanos, seconds))


def _msgpack_frames(
    names: list[str],
    index: npt.NDArray[np.int64],
    ts: npt.NDArray[np.int64],
    price: npt.NDArray[np.float64],
    size: npt.NDArray[np.float64],
    per_frame: int,
) -> list[bytes]:
    encode = msgspec.msgpack.Encoder().encode
    seconds, nanos = np.divmod(ts, 1_000_000_000)
    rows = zip(
        index.tolist(), seconds.tolist(), nanos.tolist(), price.tolist(), size.tolist(), strict=True
    )
    messages = [
        {
            "T": "t",
            "S": names[s],
            "t": _timestamp_ext(sec, ns),
            "p": p,
            "s": q,
            "x": "C",
            "c": "I",
        }
        for s, sec, ns, p, q in rows
    ]
    return [encode(messages[i : i + per_frame]) for i in range(0, len(messages), per_frame)]
