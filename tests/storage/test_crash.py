"""SIGKILL at random moments, restart, repeat: every journaled trade is stored exactly once."""

from __future__ import annotations

import json
import os
import random
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import pytest

from ingest.config import load_settings
from streams.sim import STEP_SECONDS, SimSource, rfc3339
from tests.dataset import query
from tests.storage.daemon import (
    Daemon,
    journaled_articles,
    journaled_trades,
    stored_trades,
    write_config,
)

if TYPE_CHECKING:
    from pathlib import Path

    from ingest.config import StreamName

SEED = int(os.environ.get("INGEST_CRASH_SEED", time.time_ns() % 1_000_000))
"""Kill moments are random; a failure names the seed (set INGEST_CRASH_SEED to replay it)."""
START_NS = 1_719_844_200 * 1_000_000_000  # 2024-07-01T14:30:00Z, the sim's fixed start


def sim_trades(
    config: Path, stream: StreamName, until: dict[str, int]
) -> dict[tuple[str, int], Any]:
    """What the sim emits for `stream`: (symbol, id) -> (price, size), up to the ids in `until`."""
    source = SimSource(load_settings(config), (stream,))
    emitted: dict[tuple[str, int], Any] = {}
    newest: dict[str, int] = defaultdict(int)
    for _, messages in source.frames(stream):
        for m in messages:
            if m["T"] == "t":
                emitted[(m["S"], m["i"])] = (m["p"], float(m["s"]))
                newest[m["S"]] = m["i"]
        if all(newest[symbol] >= last for symbol, last in until.items()):
            return emitted
    raise AssertionError("unreachable: the sim is endless")  # pragma: no cover


def assert_unique_bars(data: Path, stream: str, context: str) -> None:
    """Bar keys (docs/schema.md) are unique across restarts too."""
    dupes = query(
        data,
        stream,
        "bars",
        "select count(*) from (select 1 from t "
        "group by symbol, bar_type, bar_size, ts, partial having count(*) > 1)",
    )
    assert dupes == [(0,)], f"{stream}: duplicate bar keys ({context})"


def assert_exactly_once(data: Path, stream: str, journaled: set[Any], context: str) -> None:
    """No duplicate, nothing journaled missing, per symbol the ids 1..n with no gap."""
    stored = stored_trades(data, stream)
    assert stored, f"{stream}: nothing stored ({context})"
    assert {k: n for k, n in stored.items() if n > 1} == {}, f"{stream}: duplicates ({context})"
    missing = {(sym, i) for s, sym, i in journaled if s == stream} - set(stored)
    assert missing == set(), f"{stream}: journaled but not stored ({context})"
    ids: dict[str, list[int]] = defaultdict(list)
    for symbol, trade_id in stored:
        ids[symbol].append(trade_id)
    for symbol, found in ids.items():
        assert sorted(found) == list(range(1, len(found) + 1)), (
            f"{stream} {symbol}: gap ({context})"
        )


@pytest.mark.slow
class TestSimKilled:
    def test_every_journaled_trade_is_stored_exactly_once(self, tmp_path: Path) -> None:
        """Four SIGKILLs (one during start-up), then a clean stop: each trade once, as emitted."""
        rng = random.Random(SEED)
        config = write_config(tmp_path, 'roll_seconds = "0.5s"', sim="news_per_minute = 300")
        data = tmp_path / "data"
        journaled: set[Any] = set()
        articles: set[int] = set()
        recovered = 0
        for round_ in range(4):
            daemon = Daemon(tmp_path / f"run{round_}.log", "run", "--config", str(config))
            if round_ == 2:
                daemon.wait_for("daemon_started")  # most likely while recovering
                time.sleep(rng.uniform(0.0, 0.4))
            else:
                daemon.wait_for("streams_ready")
                time.sleep(rng.uniform(0.3, 1.6))
            daemon.kill()
            recovered += sum(
                e.get("frames", 0) for e in daemon.events() if e["event"] == "journal_recovered"
            )
            journaled |= journaled_trades(data)
            articles |= journaled_articles(data)
        final = Daemon(tmp_path / "final.log", "run", "--config", str(config))
        final.wait_for("streams_ready")
        time.sleep(0.5)
        assert final.stop() == 0, final.log.read_text()[-2000:]
        context = f"seed {SEED}"
        assert journaled, f"the kills left no journal behind ({context})"
        assert recovered + sum(
            e["frames"] for e in final.events() if e["event"] == "journal_recovered"
        ), f"no restart recovered anything ({context})"
        assert list((data / "_journal").glob("*/*.arrows")) == [], "a clean stop leaves no segment"
        ids = [row[0] for row in query(data, "news", "articles", "select id from t")]
        assert len(ids) == len(set(ids)), f"duplicate articles ({context})"
        assert articles <= set(ids), f"journaled articles missing ({context})"
        for stream in ("stocks", "crypto"):
            assert_exactly_once(data, stream, journaled, context)
            rows = query(data, stream, "trades", "select symbol, trade_id, price, size from t")
            newest: dict[str, int] = defaultdict(int)
            for symbol, trade_id, _, _ in rows:
                newest[symbol] = max(newest[symbol], trade_id)
            emitted = sim_trades(config, stream, newest)
            assert {(s, i): (p, z) for s, i, p, z in rows} == {
                k: v for k, v in emitted.items() if k[1] <= newest[k[0]]
            }, f"{stream}: rows differ from what the sim emitted ({context})"
            assert_unique_bars(data, stream, context)


def write_recording(path: Path, config: Path, steps: int) -> dict[str, int]:
    """`steps` sim steps of stocks and crypto as a recording; trades per stream."""
    settings = load_settings(config)
    source = SimSource(settings, ("stocks", "crypto"))
    frames = {s: source.frames(s) for s in ("stocks", "crypto")}
    trades = {"stocks": 0, "crypto": 0}
    with path.open("w") as out:
        for _ in range(steps):
            for stream, produced in frames.items():
                step, messages = next(produced)
                if not messages:
                    continue
                trades[stream] += sum(1 for m in messages if m["T"] == "t")
                recv = rfc3339(START_NS + int(step * STEP_SECONDS * 1e9) + 1_000_000)
                out.write(json.dumps({"stream": stream, "recv_ts": recv, "frame": messages}) + "\n")
    return trades


@pytest.mark.slow
class TestReplayKilled:
    def test_restarting_a_replay_stores_every_input_trade_once(self, tmp_path: Path) -> None:
        """A paced replay killed three times and restarted over the same input ends exactly once."""
        rng = random.Random(SEED)
        config = write_config(tmp_path, 'roll_seconds = "0.5s"\ndedup_horizon = "3s"')
        recording = tmp_path / "session.jsonl"
        expected = write_recording(recording, config, steps=400)  # 20 s of sim time
        data = tmp_path / "data"
        args = ("run", "--config", str(config), "--source", "replay", "--replay", str(recording))
        for round_ in range(3):
            daemon = Daemon(tmp_path / f"run{round_}.log", *args, "--speed", "8")
            daemon.wait_for("streams_ready")
            time.sleep(rng.uniform(0.2, 2.2))
            daemon.kill()
        final = Daemon(tmp_path / "final.log", *args, "--speed", "max")
        assert final.wait() == 0, final.log.read_text()[-2000:]
        context = f"seed {SEED}"
        stopped = next(e for e in final.events() if e["event"] == "daemon_stopped")
        assert stopped["duplicates"] > 0, "the restart re-sent stored trades: some were dropped"
        for stream, count in expected.items():
            stored = stored_trades(data, stream)
            assert sum(stored.values()) == count, f"{stream}: {context}"
            assert_exactly_once(data, stream, set(), context)
            quotes = query(
                data, stream, "quotes", "select count(*), count(distinct (symbol, ts)) from t"
            )
            assert quotes[0][0] == quotes[0][1], f"{stream}: duplicate quotes ({context})"
            assert_unique_bars(data, stream, context)
