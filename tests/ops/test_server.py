"""The operations HTTP server on a real loopback socket."""

from __future__ import annotations

import json

import aiohttp
import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest.config import ServerSettings
from ingest.errors import IngestError
from ingest.live import LiveHub
from ingest.metrics import Metrics
from ingest.server import METRICS_CONTENT_TYPE, parse_listen, serve
from tests.ops.fakes import FakeState, open_server

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-token-value"


class TestHealthz:
    async def test_is_200_when_healthy(self) -> None:
        """Every stream connected and fresh: 200 with `ok`."""
        async with open_server() as server, aiohttp.ClientSession() as http:
            async with http.get(server.url + "/healthz") as response:
                assert response.status == 200
                assert await response.text() == "ok\n"

    async def test_is_503_with_the_reason_when_unhealthy(self) -> None:
        """A stale stream: 503 and the provider's reason in the body."""
        async with open_server() as server, aiohttp.ClientSession() as http:
            server.state.ok, server.state.reason = False, "stocks: no message for 75s"
            async with http.get(server.url + "/healthz") as response:
                assert response.status == 503
                assert await response.text() == "stocks: no message for 75s\n"

    async def test_needs_no_token(self) -> None:
        """Probes need no credentials even when a token is configured."""
        async with open_server(token=TOKEN) as server, aiohttp.ClientSession() as http:
            async with http.get(server.url + "/healthz") as response:
                assert response.status == 200


class TestMetrics:
    async def test_serves_parseable_prometheus_text(self) -> None:
        """`/metrics` parses with prometheus_client and carries the daemon's values."""
        async with open_server() as server, aiohttp.ClientSession() as http:
            server.metrics.messages.inc("stocks", "trades", amount=42)
            server.metrics.latency.observe(0.003, "stocks")
            async with http.get(server.url + "/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == METRICS_CONTENT_TYPE
                text = await response.text()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        [sample] = families["ingest_messages"].samples
        assert sample.labels == {"stream": "stocks", "table": "trades"}
        assert sample.value == 42
        assert families["ingest_latency_seconds"].type == "histogram"
        assert families["ingest_live_clients"].samples[0].value == 0


class TestStatus:
    async def test_serves_the_providers_document_as_json(self) -> None:
        """`/status` is the provider's status() as JSON."""
        async with open_server() as server, aiohttp.ClientSession() as http:
            async with http.get(server.url + "/status") as response:
                assert response.status == 200
                assert response.content_type == "application/json"
                assert await response.json() == server.state.document

    async def test_turns_non_finite_numbers_into_null(self) -> None:
        """JSON has no NaN: a NaN rate is sent as null, so every client can parse it."""
        async with open_server() as server, aiohttp.ClientSession() as http:
            server.state.document = {"rate": float("nan"), "lag": float("inf")}
            async with http.get(server.url + "/status") as response:
                assert json.loads(await response.text()) == {"rate": None, "lag": None}

    @pytest.mark.parametrize(
        "headers",
        [
            pytest.param({}, id="missing"),
            pytest.param({"Authorization": "Bearer wrong"}, id="wrong"),
            pytest.param({"Authorization": TOKEN}, id="not-bearer"),
        ],
    )
    async def test_rejects_a_missing_or_wrong_token(self, headers: dict[str, str]) -> None:
        """With a token configured, `/status` is 401 without the right bearer token."""
        async with open_server(token=TOKEN) as server, aiohttp.ClientSession() as http:
            async with http.get(server.url + "/status", headers=headers) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert TOKEN not in await response.text()

    async def test_accepts_the_right_token(self) -> None:
        """`Authorization: Bearer <token>` opens `/status`."""
        async with open_server(token=TOKEN) as server, aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with http.get(server.url + "/status", headers=headers) as response:
                assert response.status == 200

    async def test_never_reveals_credentials(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A provider that leaks the token or an Alpaca key is redacted, on every endpoint."""
        monkeypatch.setenv("APCA_API_SECRET_KEY", "alpaca-secret-123")
        async with open_server(token=TOKEN) as server, aiohttp.ClientSession() as http:
            server.state.document = {"oops": f"key alpaca-secret-123 token {TOKEN}"}
            server.state.ok, server.state.reason = False, "auth failed for alpaca-secret-123"
            server.metrics.quarantined.inc("stocks", "alpaca-secret-123")
            headers = {"Authorization": f"Bearer {TOKEN}"}
            bodies = []
            for path in ("/status", "/healthz", "/metrics"):
                async with http.get(server.url + path, headers=headers) as response:
                    bodies.append(await response.text())
        for body in bodies:
            assert "alpaca-secret-123" not in body
            assert TOKEN not in body
            assert "[redacted]" in body


class TestServe:
    async def test_reports_none_and_returns_when_disabled(self) -> None:
        """An empty `listen` disables the server: started(None), then the task ends."""
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                port = await tg.start(
                    serve, ServerSettings(listen=""), FakeState(), Metrics(), LiveHub()
                )
        assert port is None

    async def test_fails_clearly_when_the_port_is_taken(self) -> None:
        """A second server on the same port raises IngestError naming the setting."""
        async with open_server() as server:
            taken = ServerSettings(listen=f"127.0.0.1:{server.port}")
            with pytest.raises(ExceptionGroup) as caught, anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    await tg.start(serve, taken, FakeState(), Metrics(), LiveHub())
        [error] = caught.value.exceptions
        assert isinstance(error, IngestError)
        assert f"[server] listen '127.0.0.1:{server.port}'" in str(error)

    @pytest.mark.parametrize(
        ("listen", "expected"),
        [
            pytest.param("127.0.0.1:8787", ("127.0.0.1", 8787), id="ipv4"),
            pytest.param("[::1]:9000", ("::1", 9000), id="ipv6"),
            pytest.param("localhost:0", ("localhost", 0), id="name"),
        ],
    )
    def test_parses_listen(self, listen: str, expected: tuple[str, int]) -> None:
        """`host:port` splits on the last colon; IPv6 brackets are removed."""
        assert parse_listen(listen) == expected
