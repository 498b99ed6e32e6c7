"""`ingest status` against a live server on loopback, and against nothing."""

from __future__ import annotations

import socket

import anyio
import pytest
from structlog.testing import capture_logs

from ingest.status_cli import format_status, status_command
from tests.ops.fakes import open_server

pytestmark = pytest.mark.anyio

TOKEN = "cli-token-value"


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class TestStatusCommand:
    async def test_prints_stream_and_symbol_tables(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Against a running server it prints one row per stream and per symbol, exit 0."""
        with capture_logs():  # keep the server's log lines out of the captured stdout
            async with open_server(token=TOKEN) as server:
                code = await anyio.to_thread.run_sync(status_command, server.url, TOKEN)
        out, err = capsys.readouterr()
        assert (code, err) == (0, "")
        lines = out.splitlines()
        assert (
            lines[0] == f"ingest at {server.url}/status: healthy, source sim, shard 0/1, up 12.5s"
        )
        assert lines[2].split() == [
            "STREAM",
            "CONNECTED",
            "MSGS/S",
            "LAST",
            "TICK",
            "LAG",
            "RECONNECTS",
        ]
        assert lines[3].split() == ["news", "NO", "0.0", "-", "-", "-"]
        assert lines[4].split() == [
            "stocks",
            "yes",
            "1234.5",
            "2024-03-15T14:30:00.123456Z",
            "42ms",
            "1",
        ]
        assert lines[7].split() == [
            "stocks",
            "AAPL",
            "600.2",
            "2024-03-15T14:30:00.123456Z",
            "40ms",
        ]
        assert lines[8].split() == ["stocks", "MSFT", "634.2", "2024-03-15T14:30:00Z", "50ms"]
        assert TOKEN not in out

    async def test_accepts_host_and_port_only(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`--url 127.0.0.1:PORT` is enough: scheme and path are filled in."""
        async with open_server() as server:
            code = await anyio.to_thread.run_sync(status_command, f"127.0.0.1:{server.port}", None)
        assert code == 0
        assert "stocks" in capsys.readouterr().out

    async def test_reports_a_refused_token_in_one_line(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A missing token is one line on stderr naming the fix, exit 1."""
        with capture_logs():
            async with open_server(token=TOKEN) as server:
                code = await anyio.to_thread.run_sync(status_command, server.url, None)
        out, err = capsys.readouterr()
        assert (code, out) == (1, "")
        assert err == (
            f"ingest status: daemon at {server.url}/status answered HTTP 401 Unauthorized; "
            "pass the [server] token\n"
        )

    def test_reports_an_unreachable_daemon_in_one_line(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Nobody listening: exit 1 and exactly one line on stderr, no traceback."""
        url = f"http://127.0.0.1:{free_port()}"
        assert status_command(url, None) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err == f"ingest status: daemon at {url}/status is unreachable: Connection refused\n"


class TestFormatStatus:
    def test_shows_the_reason_when_unhealthy(self) -> None:
        """An unhealthy daemon says why on the first line; missing keys show as `-`."""
        text = format_status({"ok": False, "reason": "stocks stale"}, "http://h/status")
        assert text.splitlines() == [
            "ingest at http://h/status: UNHEALTHY: stocks stale",
            "",
            "no streams reported",
        ]

    def test_never_shows_a_token_from_the_url(self) -> None:
        """A `?token=` in the URL is not echoed."""
        text = format_status({}, "http://h/status?token=abc123")
        assert "abc123" not in text
