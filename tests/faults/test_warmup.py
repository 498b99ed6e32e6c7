"""Indicator warm-up at start, from the dataset and from REST bars, through the whole daemon."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import anyio
import pyarrow as pa
import pyarrow.dataset as ds

from ingest.app import run_daemon
from ingest.config import settings_from_mapping
from streams.replay import ReplaySource
from tests.alpaca.fake_alpaca import FakeAlpaca, Send, Session
from tests.faults.harness import PATHS, daemon_settings, run_scenario

if TYPE_CHECKING:
    from pathlib import Path

    from ingest.config import Settings

MINUTE = 60_000_000_000
T0 = 1_719_844_200 * 1_000_000_000  # 2024-07-01T14:30:00Z


def stamp(ns: int) -> str:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def trade(ns: int, i: int, price: float) -> dict[str, Any]:
    return {"T": "t", "S": "AAPL", "i": i, "x": "V", "p": price, "s": 100, "t": stamp(ns)}


def recording(path: Path, minutes: range) -> None:
    """Three trades a minute, prices drifting, one frame per trade."""
    with path.open("w") as out:
        for minute in minutes:
            for k in range(3):
                ns = T0 + minute * MINUTE + k * 15_000_000_000
                price = 100.0 + minute / 10 + k / 100
                out.write(json.dumps([trade(ns, minute * 10 + k, price)]) + "\n")


def replay_settings(root: Path, warmup: bool = True) -> Settings:
    return settings_from_mapping(
        {
            "ingest": {"data_dir": str(root), "streams": ["stocks"], "source": "replay"},
            "streams": {"stocks": {"symbols": ["AAPL"]}},
            "server": {"listen": ""},
            "pipeline": {"bars": ["time:1m"], "warmup": warmup},
        }
    )


def bars(root: Path) -> list[dict[str, Any]]:
    table = ds.dataset(root / "stocks" / "bars", format="parquet", partitioning="hive").to_table()
    table = table.set_column(1, "ts", table["ts"].cast(pa.int64()))
    return sorted(table.to_pylist(), key=lambda r: (r["ts"], r["partial"]))


class TestFromTheDataset:
    def test_restart_continues_the_indicators(self, tmp_path: Path) -> None:
        """30 minutes, a stop, 5 more: the first bar after the restart has every indicator."""
        root = tmp_path / "data"
        recording(tmp_path / "one.jsonl", range(30))
        recording(tmp_path / "two.jsonl", range(30, 35))
        anyio.run(run_daemon, replay_settings(root), ReplaySource(tmp_path / "one.jsonl"))
        anyio.run(run_daemon, replay_settings(root), ReplaySource(tmp_path / "two.jsonl"))
        closed = [b for b in bars(root) if not b["partial"]]
        first = next(b for b in closed if b["ts"] == T0 + 30 * MINUTE)
        for name in ("sma_20", "ema_26", "rsi_14", "volatility_20", "momentum_10", "zscore_20"):
            assert first[name] is not None, name
        last_20 = [b["close"] for b in closed if b["ts"] <= first["ts"]][-20:]
        assert first["sma_20"] == sum(last_20) / 20

    def test_warmup_off_starts_cold(self, tmp_path: Path) -> None:
        """With `[pipeline] warmup = false` the restarted series starts with nulls."""
        root = tmp_path / "data"
        recording(tmp_path / "one.jsonl", range(30))
        recording(tmp_path / "two.jsonl", range(30, 35))
        anyio.run(run_daemon, replay_settings(root), ReplaySource(tmp_path / "one.jsonl"))
        cold = replay_settings(root, warmup=False)
        anyio.run(run_daemon, cold, ReplaySource(tmp_path / "two.jsonl"))
        first = next(b for b in bars(root) if b["ts"] == T0 + 30 * MINUTE and not b["partial"])
        assert first["sma_20"] is None


class TestFromRest:
    def test_first_live_bar_is_warm_from_alpaca_bars(self, tmp_path: Path) -> None:
        """An empty dataset: 30 REST minute bars warm the series; the first live bar is warm."""
        now = time.time_ns()
        current = now - now % MINUTE
        history = [
            {
                "T": "b",
                "S": "AAPL",
                "o": 100.0,
                "h": 101.0,
                "l": 99.0,
                "c": 100.0 + k / 10,
                "v": 1000,
                "n": 10,
                "vw": 100.2,
                "t": stamp(current - (30 - k) * MINUTE),
            }
            for k in range(30)
        ]
        live = [trade(current, 1, 103.0), trade(current + 1000, 2, 103.5)]
        closing = [trade(current + MINUTE, 3, 104.0)]
        fake = FakeAlpaca()
        fake.history.publish("stocks", history)

        def script(fake: FakeAlpaca) -> None:
            fake.script(PATHS["stocks"], Session(steps=[Send([live, closing])]))

        settings = daemon_settings(tmp_path, ("stocks",))
        outcome = anyio.run(
            lambda: run_scenario(settings, script, {("stocks", "trades"): 3}, fake=fake)
        )
        (loaded,) = outcome.events("warmup_loaded")
        assert (loaded["series"], loaded["complete"]) == (1, 1)
        first = next(b for b in bars(tmp_path) if b["ts"] == current and not b["partial"])
        closes = [100.0 + k / 10 for k in range(30)][-19:]
        assert first["sma_20"] == sum([*closes, 103.5]) / 20
        assert first["ema_26"] is not None
