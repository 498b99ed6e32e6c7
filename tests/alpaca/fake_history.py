"""The fake's REST history: what Alpaca's historical endpoints return for what was published.

Every data message the fake publishes -- sent on a socket, or published while the client could not
receive it (`Publish`, a frame cut by a drop) -- is kept per stream type. The historical endpoints
alpaca-py calls serve them back in Alpaca's shapes: `/v2/stocks/{trades,quotes,bars}`,
`/v1beta3/crypto/<loc>/{trades,quotes,bars}`, `/v1beta1/options/{trades,bars}` (items grouped
by symbol, ordered by symbol then time) and `/v1beta1/news` (a list, by creation time), filtered by
`symbols`, `start` and `end` (inclusive), paged by `limit` and `next_page_token`.

Faults: `throttle` answers the next requests with 429 and a `Retry-After`; `failures` with 500.
Every request is logged with the time it arrived, so pacing can be checked.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from datetime import datetime
from typing import Any

from aiohttp import web

__all__ = ["FakeHistory", "parse_rfc3339_ns"]

Message = dict[str, Any]

_PATHS: dict[str, tuple[str, str, str]] = {
    # path suffix -> (stream, wire type, response key)
    "/v2/stocks/trades": ("stocks", "t", "trades"),
    "/v2/stocks/quotes": ("stocks", "q", "quotes"),
    "/v2/stocks/bars": ("stocks", "b", "bars"),
    "/v1beta1/options/trades": ("options", "t", "trades"),
    "/v1beta1/options/bars": ("options", "b", "bars"),
}
_CRYPTO: dict[str, tuple[str, str]] = {
    "trades": ("t", "trades"),
    "quotes": ("q", "quotes"),
    "bars": ("b", "bars"),
}


def parse_rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time with up to nine fractional digits."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        msg = f"not an RFC 3339 time: {text!r}"
        raise ValueError(msg)
    whole, fraction, offset = match.groups()
    zone = "+00:00" if offset in (None, "Z") else offset
    base = datetime.fromisoformat(whole + zone)
    return int(base.timestamp()) * 1_000_000_000 + int(((fraction or "") + "000000000")[:9])


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)?")


def _stamp(message: Message) -> int:
    return parse_rfc3339_ns(message.get("t") or message["created_at"])


class FakeHistory:
    """Published messages per stream type, served by the historical endpoints."""

    def __init__(self, authorized: Any, websocket: Any) -> None:
        self._authorized = authorized
        self._websocket = websocket
        """`/v1beta1/news` is also the news stream's path: upgrades go to the WebSocket."""
        self.published: dict[str, list[Message]] = defaultdict(list)
        self.throttle = 0
        """Answer this many more data requests with 429."""
        self.retry_after: str | None = "0.05"
        self.failures = 0
        """Answer this many more data requests with 500."""
        self.page_size = 10_000
        """The most items a page holds, whatever `limit` asks."""
        self.requests: list[tuple[str, dict[str, str], float]] = []
        """(path, query, monotonic time) of every history request."""

    def publish(self, stream: str, messages: list[Message]) -> None:
        """The server published these: a history request made from now on returns them."""
        self.published[stream].extend(m for m in messages if m.get("T") in ("t", "q", "b", "n"))

    def add_routes(self, app: web.Application) -> None:
        for path in _PATHS:
            app.router.add_get(path, self._market)
        app.router.add_get("/v1beta3/crypto/{location}/{kind}", self._market)
        app.router.add_get("/v1beta1/news", self._news)

    def data_requests(self, suffix: str = "") -> list[tuple[str, dict[str, str], float]]:
        """History requests whose path ends with `suffix`."""
        return [r for r in self.requests if r[0].endswith(suffix)]

    # --- handlers -----------------------------------------------------------------------------

    def _fault(self, request: web.Request) -> web.Response | None:
        self.requests.append((request.path, dict(request.query), time.monotonic()))
        if not self._authorized(request):
            return web.json_response({"message": "forbidden"}, status=403)
        if self.throttle:
            self.throttle -= 1
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.json_response(
                {"code": 42910000, "message": "too many requests."}, status=429, headers=headers
            )
        if self.failures:
            self.failures -= 1
            return web.json_response({"message": "internal server error"}, status=500)
        return None

    def _window(self, query: dict[str, str]) -> tuple[int, int]:
        start = parse_rfc3339_ns(query["start"]) if query.get("start") else 0
        end = parse_rfc3339_ns(query["end"]) if query.get("end") else 2**62
        return start, end

    def _page(self, items: list[Message], query: dict[str, str]) -> tuple[list[Message], Any]:
        offset = int(query.get("page_token") or 0)
        size = min(int(query.get("limit") or 1000), self.page_size)
        page = items[offset : offset + size]
        token = str(offset + size) if offset + size < len(items) else None
        return page, token

    async def _market(self, request: web.Request) -> web.Response:
        fault = self._fault(request)
        if fault is not None:
            return fault
        if request.path.startswith("/v1beta3/crypto/"):
            stream = "crypto"
            kind, key = _CRYPTO[request.match_info["kind"]]
        else:
            stream, kind, key = _PATHS[request.path]
        query = dict(request.query)
        symbols = set(query.get("symbols", "").split(","))
        start, end = self._window(query)
        chosen = sorted(
            (
                m
                for m in self.published[stream]
                if m["T"] == kind and m["S"] in symbols and start <= _stamp(m) <= end
            ),
            key=lambda m: (m["S"], _stamp(m)),
        )
        page, token = self._page(chosen, query)
        grouped: dict[str, list[Message]] = {}
        for message in page:
            item = {k: v for k, v in message.items() if k not in ("T", "S")}
            grouped.setdefault(message["S"], []).append(item)
        return web.json_response({key: grouped, "next_page_token": token})

    async def _news(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            response: web.StreamResponse = await self._websocket(request)
            return response
        fault = self._fault(request)
        if fault is not None:
            return fault
        query = dict(request.query)
        wanted = set(filter(None, query.get("symbols", "").split(",")))
        start, end = self._window(query)
        chosen = sorted(
            (
                m
                for m in self.published["news"]
                if start <= _stamp(m) <= end and (not wanted or wanted & set(m.get("symbols", [])))
            ),
            key=lambda m: (_stamp(m), m["id"]),
        )
        page, token = self._page(chosen, query)
        items = [{k: v for k, v in m.items() if k != "T"} for m in page]
        return web.json_response({"news": items, "next_page_token": token})
