"""Recovery at start: orphaned journal segments replayed into Parquet exactly once."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import TYPE_CHECKING, Any

import anyio
import msgpack  # type: ignore[import-untyped]
import pytest
from structlog.testing import capture_logs

from ingest.app import run_daemon
from ingest.config import load_settings
from storage.journal import SegmentWriter, list_segments, read_segment
from streams.base import Frame
from streams.replay import ReplaySource
from tests.alpaca.fake_alpaca import to_msgpack_timestamp
from tests.dataset import query
from tests.storage.daemon import Daemon, journaled_trades, stored_trades, write_config

if TYPE_CHECKING:
    from collections.abc import MutableMapping
    from pathlib import Path

    from ingest.app import RunResult


def restart(config: Path, **storage: Any) -> tuple[RunResult, list[MutableMapping[str, Any]]]:
    """Start the daemon in-process over an empty replay (recovery only); result and log events."""
    settings = load_settings(config)
    settings = settings.replace(storage=dataclasses.replace(settings.storage, **storage))
    empty = config.parent / "empty.jsonl"
    empty.write_text("")
    source = ReplaySource(empty)
    with capture_logs() as logs:
        result = anyio.run(functools.partial(run_daemon, settings, source))
    return result, logs


def killed_run(tmp_path: Path, seconds: float = 1.0) -> Path:
    """A daemon that never sealed (long roll), killed after `seconds`: all of it is journaled."""
    config = write_config(tmp_path, 'roll_seconds = "1h"', ingest='streams = ["stocks"]')
    daemon = Daemon(tmp_path / "run.log", "run", "--config", str(config))
    daemon.wait_for("streams_ready")
    time.sleep(seconds)
    daemon.kill()
    return config


@pytest.mark.slow
class TestRecovery:
    def test_torn_tail_is_cut_counted_and_logged(self, tmp_path: Path) -> None:
        """A half-written last batch is cut; every complete frame before it is recovered once."""
        config = killed_run(tmp_path)
        data = tmp_path / "data"
        newest = list_segments(data, "stocks")[-1]
        read = read_segment(newest)
        assert read.frames, "the killed run journaled nothing"
        newest.write_bytes(newest.read_bytes()[:-40])  # into the last batch
        journaled = journaled_trades(data)
        assert journaled
        result, logs = restart(config)
        (torn,) = [e for e in logs if e["event"] == "journal_torn_tail"]
        assert torn["segment"] == newest.name
        assert torn["bytes_cut"] > 0
        (recovered,) = [e for e in logs if e["event"] == "journal_recovered"]
        assert recovered["torn_tails"] == 1
        assert result.recovered_frames == recovered["frames"] > 0
        stored = stored_trades(data, "stocks")
        assert {("stocks", s, i) for s, i in stored} == journaled
        assert set(stored.values()) == {1}
        assert list_segments(data, "stocks") == []

    def test_recovering_twice_changes_nothing(self, tmp_path: Path) -> None:
        """Recovery killed after sealing but before deleting its segments is simply redone."""
        config = killed_run(tmp_path, seconds=0.6)
        data = tmp_path / "data"
        segments = {p: p.read_bytes() for p in list_segments(data, "stocks")}
        restart(config)
        first = stored_trades(data, "stocks")
        for path, content in segments.items():  # as if the segments had survived a crash
            path.write_bytes(content)
        result, logs = restart(config)
        assert result.recovered_frames > 0
        assert stored_trades(data, "stocks") == first
        assert set(first.values()) == {1}
        assert not [e for e in logs if e["event"] == "journal_torn_tail"]

    def test_messagepack_frames_are_recovered_like_json_ones(self, tmp_path: Path) -> None:
        """An options frame journaled as MessagePack decodes on recovery: OCC fields, exact ts."""
        config = write_config(tmp_path, ingest='streams = ["options"]')
        trade = {"T": "t", "S": "AAPL240315C00172500", "p": 1.25, "s": 3, "x": "C", "c": "I"}
        payload = msgpack.packb([{**trade, "t": to_msgpack_timestamp("2024-03-11T13:35:35.1Z")}])
        journal = SegmentWriter(tmp_path / "data" / "_journal" / "options", "s0of1-crashed")
        journal.append([Frame("options", 1_700_000_000_000_000_000, [], [], payload, "msgpack")])
        journal.close()  # as if the process had died: the segment stays, unlocked
        result, _ = restart(config)
        assert result.recovered_frames == 1
        rows = query(
            tmp_path / "data",
            "options",
            "trades",
            "select symbol, ts, underlying, strike, price, recv_ts from t",
        )
        (symbol, ts, underlying, strike, price, recv_ts) = rows[0]
        assert (symbol, underlying, strike, price) == ("AAPL240315C00172500", "AAPL", 172.5, 1.25)
        assert ts.isoformat() == "2024-03-11T13:35:35.100000+00:00"
        assert recv_ts.timestamp() == 1_700_000_000

    def test_journal_off_leaves_segments_for_later(self, tmp_path: Path) -> None:
        """With `journal = false` nothing is recovered (and nothing deleted) at start."""
        config = killed_run(tmp_path, seconds=0.4)
        data = tmp_path / "data"
        before = list_segments(data, "stocks")
        result, _ = restart(config, journal=False)
        assert result.recovered_frames == 0
        assert list_segments(data, "stocks") == before
