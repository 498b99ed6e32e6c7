"""Option contract discovery: the OCC symbols of `[streams.options] underlyings`.

For each underlying, the latest trade price comes from alpaca-py's `StockHistoricalDataClient`
(`data_url`), then alpaca-py's `TradingClient.get_option_contracts` (`trading_url`) lists the active
contracts expiring within `expiry_days` whose strike lies within `strike_band` of that price. The
contracts endpoint is paged and alpaca-py does not follow `page_token`, so this module does. The
blocking alpaca-py calls run in worker threads; requests are paced to `rest_requests_per_minute`.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import anyio
import structlog
from alpaca.common.exceptions import APIError
from alpaca.data.enums import DataFeed
from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.data.requests import StockLatestTradeRequest
from alpaca.trading.client import TradingClient
from alpaca.trading.models import OptionContractsResponse
from alpaca.trading.requests import GetOptionContractsRequest

from ingest.errors import FeedConnectError

if TYPE_CHECKING:
    from collections.abc import Callable

    from ingest.config import AlpacaSettings, OptionsSettings
    from streams.alpaca.credentials import Credentials

__all__ = ["discover_option_contracts"]

_log = structlog.get_logger("streams.discovery")
T = TypeVar("T")
PAGE_LIMIT = 10_000


class _Pacer:
    """Spaces blocking REST calls so a minute never holds more than the allowed requests."""

    def __init__(self, per_minute: int) -> None:
        self._interval = 60.0 / per_minute
        self._next = 0.0

    async def call(self, function: Callable[[], T]) -> T:
        now = time.monotonic()
        if self._next > now:
            await anyio.sleep(self._next - now)
        self._next = max(now, self._next) + self._interval
        try:
            return await anyio.to_thread.run_sync(function)
        except (APIError, OSError) as exc:
            msg = f"option contract discovery failed: {type(exc).__name__}: {exc}"
            raise FeedConnectError(msg) from exc


async def discover_option_contracts(
    alpaca: AlpacaSettings,
    options: OptionsSettings,
    credentials: Credentials,
    *,
    today: date | None = None,
) -> list[str]:
    """OCC symbols of the contracts around each configured underlying, sorted, deduplicated.

    Raises:
        FeedConnectError: a REST call failed (worth retrying).
    """
    if not options.underlyings:
        return []
    day = today or datetime.now(UTC).date()
    pacer = _Pacer(alpaca.rest_requests_per_minute)
    data = StockHistoricalDataClient(
        credentials.key_id, credentials.secret_key, url_override=alpaca.data_url
    )
    trading = TradingClient(
        credentials.key_id, credentials.secret_key, paper=True, url_override=alpaca.trading_url
    )
    feed = DataFeed(alpaca.feed) if alpaca.feed in {f.value for f in DataFeed} else None
    request = StockLatestTradeRequest(symbol_or_symbols=list(options.underlyings), feed=feed)
    latest = await pacer.call(lambda: data.get_stock_latest_trade(request))
    if not isinstance(latest, dict):  # pragma: no cover -- raw_data is off
        return []
    found: set[str] = set()
    for underlying in options.underlyings:
        trade = latest.get(underlying)
        if trade is None:
            _log.warning("underlying_price_missing", underlying=underlying)
            continue
        price = float(trade.price)
        symbols = await _list_contracts(trading, pacer, underlying, price, day, options)
        _log.info(
            "contracts_discovered", underlying=underlying, price=price, contracts=len(symbols)
        )
        found.update(symbols)
    return sorted(found)


async def _list_contracts(
    trading: TradingClient,
    pacer: _Pacer,
    underlying: str,
    price: float,
    day: date,
    options: OptionsSettings,
) -> list[str]:
    symbols: list[str] = []
    token: str | None = None
    while True:
        request = GetOptionContractsRequest(
            underlying_symbols=[underlying],
            expiration_date_gte=day,
            expiration_date_lte=day + timedelta(days=options.expiry_days),
            strike_price_gte=f"{price * (1 - options.strike_band):.4f}",
            strike_price_lte=f"{price * (1 + options.strike_band):.4f}",
            limit=PAGE_LIMIT,
            page_token=token,
        )
        page = await pacer.call(partial(trading.get_option_contracts, request))
        if not isinstance(page, OptionContractsResponse):  # pragma: no cover -- raw_data is off
            return symbols
        symbols.extend(c.symbol for c in page.option_contracts or [])
        token = page.next_page_token
        if not token:
            return symbols
