"""The whole daemon on the Alpaca source against the fake server: Parquet holds every message."""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pyarrow as pa
from structlog.testing import capture_logs

from ingest.app import run_daemon
from ingest.config import STREAMS, StreamName, StreamSettings
from ingest.metrics import Metrics
from storage.schemas import parse_timestamps, table_for
from streams.alpaca import AlpacaSource
from streams.alpaca.credentials import Credentials
from streams.messages import FrameDecoder
from tests.alpaca.conftest import load_examples, settings_for
from tests.alpaca.fake_alpaca import Drop, FakeAlpaca, Send, Session
from tests.alpaca.test_source import ALL_CHANNELS, PATHS
from tests.dataset import count, query

if TYPE_CHECKING:
    from pathlib import Path

    from ingest.config import Settings

KEY = "PKFAKEKEY0123456789"
SECRET = "fakeSecretValue-DoNotLog-0123456789"


def expected_rows(stream: StreamName, examples: list[dict[str, Any]]) -> dict[str, int]:
    """How many rows each table must hold for these messages."""
    rows: dict[str, int] = {}
    for message in FrameDecoder(stream).decode(msgspec.json.encode(examples), 0).messages:
        table = table_for(stream, type(message))
        assert table is not None
        rows[table] = rows.get(table, 0) + 1
    return rows


async def run_against_fake(settings: Settings, total: int, logs_out: list[Any]) -> Metrics:
    """Run the daemon on the fake until it has taken `total` messages, then stop it."""
    fake = FakeAlpaca(key=KEY, secret=SECRET)
    await fake.start()
    try:
        for stream in STREAMS:
            examples = load_examples(stream)
            half = len(examples) // 2
            first = Session(steps=[Send([examples[:half]]), Drop()])
            fake.script(PATHS[stream], first, Session(steps=[Send([examples[half:]])]))
        alpaca = settings_for(fake)
        streams = {
            s: StreamSettings(
                symbols=("*",) if s != "options" else ("AAPL240315C00172500",),
                channels=ALL_CHANNELS[s],
            )
            for s in STREAMS
        }
        configured = settings.replace(alpaca=alpaca, streams=streams)
        metrics = Metrics()
        source = AlpacaSource(
            alpaca, streams, credentials=Credentials(KEY, SECRET), metrics=metrics
        )
        stop = anyio.Event()
        with capture_logs() as logs, anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    functools.partial(run_daemon, configured, source, stop=stop, metrics=metrics)
                )
                while sum(metrics.messages.values.values()) < total:  # noqa: ASYNC110 -- test probe
                    await anyio.sleep(0.05)
                stop.set()
        logs_out.extend(logs)
        for path in PATHS.values():
            assert fake.max_active[path] == 1, path
    finally:
        await fake.stop()
    return metrics


class TestEndToEnd:
    def test_every_message_lands_once_across_a_drop(self, settings: Settings) -> None:
        """Four streams, a dropped connection each: every data message is in Parquet once."""
        examples = {s: load_examples(s) for s in STREAMS}
        total = sum(len(v) for v in examples.values())
        logs: list[Any] = []
        metrics = anyio.run(run_against_fake, settings, total, logs)
        root = settings.ingest.data_dir
        for stream in STREAMS:
            for table, rows in expected_rows(stream, examples[stream]).items():
                assert count(root, stream, table) == rows, (stream, table)
            assert metrics.reconnects.get(stream) >= 1, stream
        sent = [(m["S"], m["i"], m["p"], m["t"]) for m in examples["stocks"] if m["T"] == "t"]
        stored = query(
            root, "stocks", "trades", "select symbol, trade_id, price, epoch_ns(ts) from t"
        )
        nanoseconds = parse_timestamps([t for *_, t in sent]).cast(pa.int64()).to_pylist()
        want = sorted((s, i, p, n) for (s, i, p, _), n in zip(sent, nanoseconds, strict=True))
        assert sorted(stored) == want

    def test_credentials_never_logged(self, settings: Settings) -> None:
        """A run with credentials leaves no trace of the key or secret in any log event."""
        examples = {s: load_examples(s) for s in STREAMS}
        logs: list[Any] = []
        metrics = anyio.run(
            run_against_fake, settings, sum(len(v) for v in examples.values()), logs
        )
        text = json.dumps(logs, default=repr) + metrics.render()
        assert logs
        assert KEY not in text
        assert SECRET not in text


async def record_session(settings: Settings, record_dir: Path, total: int) -> None:
    """Run the daemon on the fake with `--record` semantics: a recorder on the source."""
    from streams.recorder import open_recorder

    fake = FakeAlpaca(key=KEY, secret=SECRET)
    await fake.start()
    try:
        for stream in STREAMS:
            fake.script(PATHS[stream], Session(steps=[Send([load_examples(stream)])]))
        alpaca = settings_for(fake)
        streams = {
            s: StreamSettings(
                symbols=("*",) if s != "options" else ("AAPL240315C00172500",),
                channels=ALL_CHANNELS[s],
            )
            for s in STREAMS
        }
        metrics = Metrics()
        stop = anyio.Event()
        async with open_recorder(record_dir) as recorder:
            source = AlpacaSource(
                alpaca,
                streams,
                credentials=Credentials(KEY, SECRET),
                metrics=metrics,
                recorder=recorder,
            )
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(
                        functools.partial(
                            run_daemon,
                            settings.replace(alpaca=alpaca, streams=streams),
                            source,
                            stop=stop,
                            metrics=metrics,
                        )
                    )
                    while sum(metrics.messages.values.values()) < total:  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                    stop.set()
    finally:
        await fake.stop()


def dataset_rows(root: Path) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    """Every table's rows without recv_ts, sorted: what must match between live and replay."""
    out: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for stream in STREAMS:
        for table_dir in sorted((root / stream).glob("*")):
            rows = query(root, stream, table_dir.name, "select * exclude (recv_ts) from t")
            out[(stream, table_dir.name)] = sorted(rows, key=repr)
    return out


class TestRecordAndReplay:
    def test_replaying_a_recording_gives_the_same_dataset(
        self, settings: Settings, tmp_path: Path
    ) -> None:
        """A live session recorded with a recorder, replayed, writes the same rows (but recv_ts)."""
        from streams.replay import ReplaySource

        total = sum(len(load_examples(s)) for s in STREAMS)
        live = settings
        anyio.run(record_session, live, tmp_path / "rec", total)
        replayed = live.replace(
            ingest=dataclasses.replace(live.ingest, data_dir=tmp_path / "replayed")
        )
        anyio.run(run_daemon, replayed, ReplaySource(tmp_path / "rec"))
        original = dataset_rows(live.ingest.data_dir)
        assert original
        assert dataset_rows(tmp_path / "replayed") == original
