"""The running daemon as operators see it: sd_notify, HTTP endpoints, `ingest status`, shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest.app import run_daemon
from ingest.config import STREAMS, load_settings, shard_settings
from streams.sim import SimSource
from tests.ops.notify_listener import NotifyListener

if TYPE_CHECKING:
    from ingest.config import Settings
    from ingest.router import StreamRouter
    from ingest.state import DaemonState

ROOT = Path(__file__).parent.parent


def write_config(tmp_path: Path, listen: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[ingest]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[server]\nlisten = "{listen}"\n'
        "[sim]\nticks_per_second = 50\n"
    )
    return path


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.slow
class TestSystemdNotify:
    @pytest.mark.anyio
    async def test_ready_watchdog_status_stopping_sequence(self, tmp_path: Path) -> None:
        """A real daemon subprocess sends READY, WATCHDOG and STATUS, then STOPPING on SIGTERM."""
        config = await anyio.to_thread.run_sync(write_config, tmp_path)
        with NotifyListener(watchdog_usec=400_000) as listener:  # abstract socket
            env = {**os.environ, **listener.env}
            command = [sys.executable, "-m", "ingest", "run", "--config", str(config)]
            process = await anyio.open_process(command, env=env, cwd=ROOT)
            async with process:
                with anyio.fail_after(60):
                    await listener.wait_for("READY", "1")
                    await listener.wait_for("WATCHDOG", "1")
                    await listener.wait_for("WATCHDOG", "1")
                process.send_signal(signal.SIGTERM)
                with anyio.fail_after(60):
                    await listener.wait_for("STOPPING", "1")
                    assert await process.wait() == 0
        keys = [next(iter(m)) for m in listener.received]
        assert keys.index("READY") < keys.index("STOPPING")
        assert "STATUS" in keys
        status = next(m["STATUS"] for m in listener.received if "STATUS" in m)
        assert "4 streams up" in status


async def _run_and_probe(settings: Settings, probe: Any) -> Any:
    """Run the daemon, call `probe(port)` in a thread once it is ready, then stop it."""
    stop = anyio.Event()
    ready = anyio.Event()
    port: list[int] = []

    def on_ready(state: DaemonState) -> None:
        assert state.port is not None
        port.append(state.port)
        ready.set()

    result: list[Any] = []
    async with anyio.create_task_group() as tg:
        source = SimSource(settings, settings.ingest.streams)
        tg.start_soon(lambda: run_daemon(settings, source, stop=stop, on_ready=on_ready))
        with anyio.fail_after(30):
            await ready.wait()
        await anyio.sleep(1.2)  # let every stream speak at least once
        result.append(await anyio.to_thread.run_sync(probe, port[0]))
        stop.set()
    return result[0]


class TestHttpEndpoints:
    def test_healthz_status_and_metrics(self, settings: Settings) -> None:
        """The daemon serves /healthz 200, /status per stream and symbol, parseable /metrics."""
        import dataclasses

        served = settings.replace(server=dataclasses.replace(settings.server, listen="127.0.0.1:0"))

        def probe(port: int) -> dict[str, tuple[int, str]]:
            base = f"http://127.0.0.1:{port}"
            return {path: fetch(base + path) for path in ("/healthz", "/status", "/metrics")}

        answers = anyio.run(_run_and_probe, served, probe)
        assert answers["/healthz"][0] == 200, answers["/healthz"]
        status = json.loads(answers["/status"][1])
        assert status["ok"] is True
        assert set(status["streams"]) == set(STREAMS)
        assert status["streams"]["stocks"]["connected"] is True
        assert "AAPL" in status["streams"]["stocks"]["symbols"]
        families = {f.name: f for f in text_string_to_metric_families(answers["/metrics"][1])}
        messages = families["ingest_messages"]
        stocks = [
            s for s in messages.samples if s.labels == {"stream": "stocks", "table": "trades"}
        ]
        assert stocks
        assert stocks[0].value > 0
        assert "ingest_latency_seconds" in families


@pytest.mark.slow
class TestStatusCommand:
    def test_status_prints_a_table_of_the_running_daemon(self, tmp_path: Path) -> None:
        """`ingest status --url` prints every stream of a running daemon; exit 0."""
        config = write_config(tmp_path, listen="127.0.0.1:18787")
        command = [sys.executable, "-m", "ingest", "run", "--config", str(config)]
        daemon = subprocess.Popen(
            [*command, "--log-format", "json"], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        try:
            assert daemon.stdout is not None
            for line in daemon.stdout:
                if '"streams_ready"' in line:
                    break
            status = subprocess.run(
                [sys.executable, "-m", "ingest", "status", "--url", "http://127.0.0.1:18787"],
                capture_output=True,
                text=True,
                timeout=30,
                cwd=ROOT,
                check=False,
            )
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.communicate(timeout=60)
        assert status.returncode == 0, status.stderr
        for stream in STREAMS:
            assert stream in status.stdout
        assert daemon.returncode == 0

    def test_status_of_nothing_is_one_line_and_exit_1(self) -> None:
        """No daemon listening: one line on stderr, exit 1."""
        status = subprocess.run(
            [sys.executable, "-m", "ingest", "status", "--url", "http://127.0.0.1:9"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
            check=False,
        )
        assert status.returncode == 1
        assert status.stderr.strip().count("\n") == 0


class TestShards:
    @pytest.mark.parametrize("count", [2, 3, 4])
    def test_shards_partition_the_symbols(self, count: int) -> None:
        """Every symbol belongs to exactly one shard; wildcards stay on shard 0."""
        import dataclasses

        base = load_settings(ROOT / "config.toml")
        seen: dict[str, list[str]] = {name: [] for name in STREAMS}
        for index in range(count):
            ingest = dataclasses.replace(base.ingest, shard=(index, count))
            shard = shard_settings(base.replace(ingest=ingest))
            for name in STREAMS:
                seen[name] += shard.streams[name].symbols
        for name in STREAMS:
            assert sorted(seen[name]) == sorted(base.streams[name].symbols), name


class TestHealth:
    def test_unhealthy_until_ready_and_when_silent(self, settings: Settings) -> None:
        """Not ready: 'not connected'; ready but silent past the staleness limit: 'no message'."""
        import dataclasses

        from ingest.metrics import Metrics
        from ingest.state import DaemonState

        quick = settings.replace(alpaca=dataclasses.replace(settings.alpaca, staleness_seconds=0.0))
        state = DaemonState(quick, Metrics(), "sim")
        state.attach({"stocks": cast("StreamRouter", _QuietRouter())})
        ok, reason = state.health()
        assert not ok
        assert reason == "stocks: not connected"
        state.ready = True
        ok, reason = state.health()
        assert not ok
        assert reason.startswith("stocks: no message for")

    def test_alpaca_connection_comes_from_the_gauge(self, settings: Settings) -> None:
        """For the live source, connected means the source set its gauge to 1."""
        from ingest.metrics import Metrics
        from ingest.state import DaemonState

        metrics = Metrics()
        state = DaemonState(settings, metrics, "alpaca")
        state.attach({"stocks": cast("StreamRouter", _QuietRouter())})
        state.ready = True
        assert state.health() == (False, "stocks: not connected")
        metrics.connected.set(1, "stocks")
        assert state.health() == (True, "ok")


class _QuietRouter:
    """A router with no symbol state: a stream that has said nothing yet."""

    symbols: dict[str, Any] = {}  # noqa: RUF012 -- read-only stand-in

    def queue_depth(self) -> int:
        return 0
