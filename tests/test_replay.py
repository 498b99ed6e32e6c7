"""Replay: recorded frames through the whole daemon, ending by itself."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from ingest.app import RunResult, run_daemon
from ingest.errors import ConfigError
from streams.replay import ReplaySource
from tests.dataset import count, query

if TYPE_CHECKING:
    from ingest.config import Settings


def replay(settings: Settings, source: ReplaySource) -> RunResult:
    """Run the daemon over a replay in its own event loop."""
    return anyio.run(run_daemon, settings, source)


ROOT = Path(__file__).parent.parent
DATA = ROOT / "tests" / "data"

TRADE = (
    '{{"T":"t","S":"{s}","i":{i},"x":"V","p":{p},"s":100,'
    '"t":"2024-07-01T14:3{m}:0{sec}.123456789Z","c":["@"],"z":"C"}}'
)


def trades_frame(start: int, n: int, symbol: str = "AAPL", minute: int = 0) -> str:
    return (
        "["
        + ",".join(
            TRADE.format(s=symbol, i=start + k, p=100 + k / 100, m=minute, sec=k % 10)
            for k in range(n)
        )
        + "]"
    )


def write_recording(path: Path) -> int:
    """A recording mixing bare arrays, envelopes, a bad line and a control frame; trade count."""
    lines = [
        '[{"T":"success","msg":"connected"}]',
        trades_frame(1, 5),
        json.dumps(
            {
                "stream": "stocks",
                "recv_ts": "2024-07-01T14:30:01.5Z",
                "frame": json.loads(trades_frame(6, 5, "MSFT", minute=1)),
            }
        ),
        "not json at all",
        trades_frame(11, 3, minute=2),
    ]
    path.write_text("\n".join(lines) + "\n")
    return 13


def replay_command(recording: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`ingest run --source replay --replay RECORDING ARGS...` as a user runs it."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ingest",
            "run",
            "--source",
            "replay",
            "--replay",
            str(recording),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


class TestReplay:
    def test_replay_ends_by_itself_with_every_trade(self, settings: Settings) -> None:
        """Every recorded trade lands once; the malformed line is quarantined; the run ends."""
        recording = settings.ingest.data_dir.parent / "session.jsonl"
        expected = write_recording(recording)
        result = replay(settings, ReplaySource(recording))
        root = settings.ingest.data_dir
        assert count(root, "stocks", "trades") == expected
        ids = query(root, "stocks", "trades", "select list(trade_id order by trade_id) from t")
        assert ids == [(list(range(1, expected + 1)),)]
        assert result.quarantined == 1
        quarantined = list((root / "_quarantine" / "stocks").rglob("*.jsonl"))
        line = json.loads(quarantined[0].read_text())
        assert line["reason"] == "malformed_frame"
        assert line["raw"] == "not json at all"

    def test_bars_from_replayed_trades(self, settings: Settings) -> None:
        """Replayed trades go through the pipeline: one closed 1m bar per minute and symbol."""
        recording = settings.ingest.data_dir.parent / "session.jsonl"
        write_recording(recording)
        replay(settings, ReplaySource(recording))
        bars = query(
            settings.ingest.data_dir,
            "stocks",
            "bars",
            "select symbol, strftime(ts, '%H:%M'), trade_count, partial from t "
            "where bar_type = 'time' order by ts",
        )
        assert bars == [
            ("AAPL", "14:30", 5, False),
            ("MSFT", "14:31", 5, True),
            ("AAPL", "14:32", 3, True),
        ]

    def test_folder_of_files_in_name_order(self, settings: Settings) -> None:
        """A folder replays its *.jsonl files in name order."""
        folder = settings.ingest.data_dir.parent / "rec"
        folder.mkdir()
        (folder / "a.jsonl").write_text(trades_frame(1, 4) + "\n")
        (folder / "b.jsonl").write_text(trades_frame(5, 4, minute=1) + "\n")
        (folder / "ignored.txt").write_text("x\n")
        replay(settings, ReplaySource(folder))
        assert count(settings.ingest.data_dir, "stocks", "trades") == 8

    def test_bare_arrays_follow_the_default_stream(self, settings: Settings) -> None:
        """A bare array is routed to the default stream (the first of --streams)."""
        recording = settings.ingest.data_dir.parent / "crypto.jsonl"
        frame = (
            '[{"T":"t","S":"BTC/USD","p":60000.5,"s":0.25,'
            '"t":"2024-07-01T14:30:00Z","i":7,"tks":"B"}]'
        )
        recording.write_text(frame + "\n")
        crypto = settings.replace(ingest=dataclasses.replace(settings.ingest, streams=("crypto",)))
        replay(crypto, ReplaySource(recording, default_stream="crypto"))
        rows = query(
            settings.ingest.data_dir, "crypto", "trades", "select symbol, size, taker_side from t"
        )
        assert rows == [("BTC/USD", 0.25, "B")]

    def test_missing_path_is_a_config_error(self, tmp_path: Path) -> None:
        """A replay path that does not exist is named in a config error."""
        with pytest.raises(ConfigError, match="does not exist"):
            ReplaySource(tmp_path / "nope.jsonl")


@pytest.mark.slow
class TestReplayCommand:
    def test_cli_replay_at_max_speed(self, tmp_path: Path) -> None:
        """`ingest run --source replay --replay PATH --speed max` writes the dataset and exits 0."""
        recording = tmp_path / "session.jsonl"
        expected = write_recording(recording)
        proc = replay_command(
            recording, "--speed", "max", "--data-dir", str(tmp_path / "d"), "--streams", "stocks"
        )
        assert proc.returncode == 0, proc.stderr
        assert count(tmp_path / "d", "stocks", "trades") == expected


def cme_recording(path: Path) -> None:
    """The 120 real CME ESU4 trades as an Alpaca-shaped recording, one frame per 10 trades."""
    import csv

    with (DATA / "esu4_trades_20240701T2358_20240702T0002.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    messages: list[dict[str, object]] = [
        {
            "T": "t",
            "S": "ESU4",
            "i": int(row["sequence"]),
            "x": "X",
            "p": float(row["price"]),
            "s": int(row["size"]),
            "t": row["ts_event"].replace(" ", "T").replace("+00:00", "Z"),
            "c": [],
            "z": "",
        }
        for row in rows
    ]
    with path.open("w") as out:
        for start in range(0, len(messages), 10):
            frame = messages[start : start + 10]
            out.write(json.dumps({"stream": "stocks", "frame": frame}) + "\n")


def vendor_minutes() -> list[tuple[str, float, float, float, float, float]]:
    """Databento's own ESU4 1-minute bars for the minutes the trades cover."""
    import csv

    with (DATA / "esu4_nqu4_ohlcv1m_20240701T2340_20240702T0010.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["symbol"] == "ESU4"]
    wanted = ("23:58", "23:59", "00:00", "00:01")
    return [
        (
            r["ts_event"][11:16],
            float(r["open"]),
            float(r["high"]),
            float(r["low"]),
            float(r["close"]),
            float(r["volume"]),
        )
        for r in rows
        if r["ts_event"][11:16] in wanted
    ]


@pytest.mark.slow
class TestRealTradesThroughTheCommand:
    def test_cme_trades_give_the_vendor_minute_bars(self, tmp_path: Path) -> None:
        """Real CME trades replayed by `ingest run` give Databento's 1-minute bars exactly."""
        recording = tmp_path / "esu4.jsonl"
        cme_recording(recording)
        proc = replay_command(recording, "--data-dir", str(tmp_path / "d"), "--streams", "stocks")
        assert proc.returncode == 0, proc.stderr
        bars = query(
            tmp_path / "d",
            "stocks",
            "bars",
            "select strftime(ts, '%H:%M'), open, high, low, close, volume, trade_count, "
            "round(vwap, 6) from t where bar_type = 'time' and bar_size = '1m' order by ts",
        )
        vendor = vendor_minutes()
        assert [b[:6] for b in bars] == vendor
        assert [b[6] for b in bars] == [13, 15, 68, 24]
        assert [b[7] for b in bars] == [5528.736111, 5528.728261, 5529.057143, 5529.256757]
