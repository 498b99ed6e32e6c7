"""The whole daemon on the Alpaca source against the fake server: Parquet holds every message."""

from __future__ import annotations

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
