"""The sim source: deterministic content in Alpaca's own message shapes."""

from __future__ import annotations

import dataclasses
import itertools
from typing import TYPE_CHECKING

import msgspec

from ingest.config import STREAMS
from streams.messages import FrameDecoder, NewsArticle, OptionTrade, StockTrade
from streams.occ import parse_occ
from streams.sim import SimSource, rfc3339

if TYPE_CHECKING:
    from ingest.config import Settings


def take(source: SimSource, stream: str, steps: int) -> list[dict[str, object]]:
    frames = itertools.islice(source.frames(stream), steps)  # type: ignore[arg-type]
    return [m for _, messages in frames for m in messages]


class TestDeterminism:
    def test_same_seed_same_frames(self, settings: Settings) -> None:
        """Two sources with one seed and one start produce identical frames."""
        a = take(SimSource(settings, ("stocks",)), "stocks", 200)
        b = take(SimSource(settings, ("stocks",)), "stocks", 200)
        assert a
        assert a == b

    def test_other_seed_other_frames(self, settings: Settings) -> None:
        """Changing the seed changes the prices."""
        other = settings.replace(sim=dataclasses.replace(settings.sim, seed=99))
        a = take(SimSource(settings, ("stocks",)), "stocks", 100)
        b = take(SimSource(other, ("stocks",)), "stocks", 100)
        assert a != b


class TestShapes:
    def test_every_stream_decodes_without_rejects(self, settings: Settings) -> None:
        """Sim frames decode through the live decoder with zero rejects, for every stream."""
        many_news = settings.replace(sim=dataclasses.replace(settings.sim, news_per_minute=6000))
        source = SimSource(many_news, ("stocks", "crypto", "options", "news"))
        for stream in STREAMS:
            decoder = FrameDecoder(stream)
            messages = take(source, stream, 400)
            assert messages, stream
            decoded = decoder.decode(msgspec.json.encode(messages), 1)
            assert decoded.rejects == []
            assert len(decoded.messages) == len(messages)

    def test_stock_trades_look_like_alpaca(self, settings: Settings) -> None:
        """Stock trades carry id, exchange, conditions and tape, with ns timestamps."""
        messages = take(SimSource(settings, ("stocks",)), "stocks", 50)
        decoded = FrameDecoder("stocks").decode(msgspec.json.encode(messages), 1).messages
        trades = [m for m in decoded if isinstance(m, StockTrade)]
        assert trades
        assert all(t.x and t.c and t.z == "C" and len(str(t.t)) == 30 for t in trades)

    def test_options_are_occ_contracts_around_the_underlying(self, settings: Settings) -> None:
        """Option symbols parse as OCC contracts of the configured underlyings."""
        messages = take(SimSource(settings, ("options",)), "options", 200)
        decoded = FrameDecoder("options").decode(msgspec.json.encode(messages), 1).messages
        contracts = {parse_occ(m.S) for m in decoded if isinstance(m, OptionTrade)}
        assert contracts
        assert None not in contracts
        assert {c.underlying for c in contracts if c} <= {"AAPL", "SPY"}

    def test_news_routes_by_symbols(self, settings: Settings) -> None:
        """News articles name stock symbols and carry created/updated times."""
        many_news = settings.replace(sim=dataclasses.replace(settings.sim, news_per_minute=6000))
        messages = take(SimSource(many_news, ("news",)), "news", 100)
        decoded = FrameDecoder("news").decode(msgspec.json.encode(messages), 1).messages
        articles = [m for m in decoded if isinstance(m, NewsArticle)]
        assert articles
        assert all(a.symbols and str(a.created_at).endswith("Z") for a in articles)


class TestRfc3339:
    def test_nanoseconds_kept(self) -> None:
        """Nine fractional digits, UTC, as Alpaca writes them."""
        assert rfc3339(1_719_844_200_123_456_789) == "2024-07-01T14:30:00.123456789Z"
