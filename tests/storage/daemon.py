"""The daemon as a subprocess that can be killed, and what it left on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec
import pyarrow as pa
import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).parent.parent.parent

TradeKey = tuple[str, str, int]
"""(stream, symbol, trade id)."""


def write_config(
    tmp_path: Path, storage: str = "", extra: str = "", ingest: str = "", sim: str = ""
) -> Path:
    """A sim config writing to `tmp_path/data`; lines for [storage], [ingest], [sim]; sections."""
    path = tmp_path / "config.toml"
    path.write_text(
        f'[ingest]\ndata_dir = "{tmp_path / "data"}"\n{ingest}\n'
        '[server]\nlisten = ""\n'
        f'[sim]\nticks_per_second = 50\nstart = "2024-07-01T14:30:00Z"\n{sim}\n'
        f"[storage]\n{storage}\n{extra}"
    )
    return path


class Daemon:
    """`python -m ingest ARGS` with its JSON log in a file (so it never blocks on a pipe)."""

    running: ClassVar[list[Daemon]] = []
    """Every daemon started; `reap` kills what a failed test left running."""

    def __init__(self, log: Path, *args: str) -> None:
        Daemon.running.append(self)
        self.log = log
        self._out = log.open("w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ingest", *args, "--log-format", "json"],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line so far."""
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_for(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll the log until `event` appears; fail with the log's tail if it does not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events() if e.get("event") == event]
            if found:
                return found[0]
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        pytest.fail(f"{event} not logged: {self.log.read_text()[-2000:]}")

    @classmethod
    def reap(cls) -> None:
        """Kill every daemon still running (a test that failed before stopping its own)."""
        for daemon in cls.running:
            if daemon.proc.poll() is None:
                daemon.kill()
        cls.running.clear()

    def kill(self) -> None:
        """SIGKILL: no flush, no seal, no cleanup."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._out.close()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._out.close()
        return code

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the process to end by itself; the exit code."""
        code = self.proc.wait(timeout=timeout)
        self._out.close()
        return code


def journal_frames(data: Path) -> Iterator[tuple[str, bytes]]:
    """(stream, payload) of every complete frame in the journal, read without `storage.journal`."""
    for path in sorted((data / "_journal").glob("*/*.arrows")):
        source = pa.BufferReader(path.read_bytes())
        try:
            for batch in pa.ipc.open_stream(source):
                for payload in batch.column("payload").to_pylist():
                    yield path.parent.name, bytes(payload or b"")
        except (pa.ArrowInvalid, OSError):
            continue  # a torn tail: the frames before it were yielded


def journaled_trades(data: Path) -> set[TradeKey]:
    """The trades (with an id) of every frame on disk in the journal."""
    keys: set[TradeKey] = set()
    for stream, payload in journal_frames(data):
        for message in msgspec.json.decode(payload):
            if message.get("T") == "t" and "i" in message:
                keys.add((stream, message["S"], message["i"]))
    return keys


def journaled_articles(data: Path) -> set[int]:
    """The ids of the news articles of every frame on disk in the journal."""
    return {
        message["id"]
        for stream, payload in journal_frames(data)
        if stream == "news"
        for message in msgspec.json.decode(payload)
        if message.get("T") == "n"
    }


def stored_trades(data: Path, stream: str) -> Counter[tuple[str, int]]:
    """(symbol, trade id) -> how many rows of the stream's trades table hold it."""
    from tests.dataset import query

    if not any((data / stream / "trades").glob("**/*.parquet")):
        return Counter()
    rows = query(data, stream, "trades", "select symbol, trade_id from t")
    return Counter((str(symbol), int(trade_id)) for symbol, trade_id in rows)
