"""The operations HTTP server: `/healthz`, `/metrics`, `/status` and the `/live` WebSocket.

It listens on `[server] listen` (loopback by default; an empty string disables it) and runs as
one task of the daemon's root task group: `port = await tg.start(serve, ...)`. It reads the
daemon's state through the small `StatusProvider` protocol, so it depends on nothing else in the
daemon and tests can hand it a fake.

`/healthz` and `/metrics` are open, for probes and Prometheus; `/status` and `/live` need the
bearer token when `[server] token` is set. Credentials never appear in a response: every body
is scrubbed of the token and of the Alpaca keys in the environment before it is sent.
"""

from __future__ import annotations

import hmac
import json
import os
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import structlog
from aiohttp import web

from ingest.errors import IngestError
from ingest.live import encode_json

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from ingest.config import ServerSettings
    from ingest.live import LiveHub
    from ingest.metrics import Metrics

__all__ = ["METRICS_CONTENT_TYPE", "StatusProvider", "parse_listen", "serve"]

_log = structlog.get_logger(__name__)

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SECRET_ENV = ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY")
_REDACTED = "[redacted]"
_SHUTDOWN_GRACE_S = 5.0


class StatusProvider(Protocol):
    """What the server needs from the daemon. Both methods are synchronous and cheap.

    `status()` returns a JSON-able document. `ingest status` renders these keys (all optional):

        {"ok": bool, "reason": str, "source": str, "shard": "0/1", "uptime_s": float,
         "streams": {"stocks": {"connected": bool, "msgs_per_s": float,
                                "last_tick": "<RFC 3339>" | int ns | None, "lag_s": float,
                                "reconnects": int,
                                "symbols": {"AAPL": {"msgs_per_s": float, "last_tick": ...,
                                                     "lag_s": float}}}}}
    """

    def health(self) -> tuple[bool, str]:
        """(True, "ok") when every enabled stream is connected and fresh, else (False, why)."""
        ...

    def status(self) -> dict[str, Any]:
        """Per stream and per symbol: connected, last tick time, rates, lag."""
        ...


def parse_listen(listen: str) -> tuple[str, int]:
    """Split `host:port` (IPv6 as `[::1]:8787`) into what a socket binds.

    Args:
        listen: The `[server] listen` value, already validated by the config loader.
    """
    host, _, port = listen.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


class _Redactor:
    """Replaces every known secret in outgoing text; a misbehaving provider cannot leak one."""

    def __init__(self, token: str | None):
        candidates = [token, *(os.environ.get(name) for name in _SECRET_ENV)]
        # Very short values would redact innocent text and cannot be meaningful secrets.
        self._secrets = sorted({s for s in candidates if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return text

    def json(self, document: Any) -> dict[str, Any] | list[Any]:
        """A document re-parsed after redaction, for handing to `/live` clients."""
        parsed: dict[str, Any] | list[Any] = json.loads(self(encode_json(document)))
        return parsed


def _create_app(
    settings: ServerSettings, state: StatusProvider, metrics: Metrics, hub: LiveHub
) -> web.Application:
    redact = _Redactor(settings.token)
    expected = f"Bearer {settings.token}".encode() if settings.token else None

    def authorized(request: web.Request) -> bool:
        """True without a token, or with `Authorization: Bearer <token>` (or `?token=`)."""
        if expected is None:
            return True
        given = request.headers.get("Authorization", "")
        if not given and "token" in request.query:  # browsers cannot set WebSocket headers
            given = "Bearer " + request.query["token"]
        return hmac.compare_digest(given.encode(), expected)

    def unauthorized() -> web.Response:
        return web.Response(
            status=401,
            text="401: missing or wrong bearer token\n",
            headers={"WWW-Authenticate": 'Bearer realm="ingest"'},
        )

    async def healthz(request: web.Request) -> web.Response:
        ok, reason = state.health()
        return web.Response(status=200 if ok else 503, text=redact(reason or "ok") + "\n")

    async def metrics_text(request: web.Request) -> web.Response:
        return web.Response(
            body=redact(metrics.render()).encode(),
            headers={"Content-Type": METRICS_CONTENT_TYPE},
        )

    async def status(request: web.Request) -> web.Response:
        if not authorized(request):
            return unauthorized()
        return web.Response(
            text=redact(encode_json(state.status())), content_type="application/json"
        )

    async def live(request: web.Request) -> web.StreamResponse:
        if not authorized(request):
            return unauthorized()

        def live_status() -> dict[str, Any]:
            document = redact.json(state.status())
            return document if isinstance(document, dict) else {"status": document}

        return await hub.handle(request, live_status)

    async def close_live(app: web.Application) -> None:
        hub.close_all()  # else each open WebSocket would hold shutdown for the full grace

    app = web.Application()
    app.on_shutdown.append(close_live)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/status", status)
    app.router.add_get("/live", live)
    return app


async def serve(
    settings: ServerSettings,
    state: StatusProvider,
    metrics: Metrics,
    hub: LiveHub,
    *,
    task_status: TaskStatus[int | None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the operations endpoints until cancelled.

    Args:
        settings: `[server]`: `listen` (`host:port`, port 0 picks a free one, "" disables) and
            the optional bearer `token`.
        state: The daemon's health and status.
        metrics: Rendered on `/metrics`.
        hub: Serves `/live` connections.
        task_status: Reports the bound port once the socket accepts connections, or None when
            the server is disabled (the task then returns at once).
    """
    if not settings.listen:
        _log.info("http_server_disabled")
        task_status.started(None)
        return
    host, port = parse_listen(settings.listen)
    app = _create_app(settings, state, metrics, hub)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE_S)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            msg = f"[server] listen {settings.listen!r}: cannot listen: {exc.strerror or exc}"
            raise IngestError(msg) from exc
        bound = runner.addresses[0][1]
        _log.info("http_server_started", host=host, port=bound, token=settings.token is not None)
        task_status.started(bound)
        await anyio.sleep_forever()
    finally:
        with anyio.move_on_after(_SHUTDOWN_GRACE_S, shield=True):
            await runner.cleanup()
        _log.info("http_server_stopped")
