"""REST history through alpaca-py against the fake: every channel, pages, pacing, 429, errors."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pytest
from structlog.testing import capture_logs

from ingest.errors import FeedConnectError, FeedProtocolError
from streams.alpaca.history import (
    HistoryClient,
    HistoryRequest,
    RestPacer,
    timeframe_of,
)
from tests.alpaca.conftest import load_examples, settings_for
from tests.alpaca.fake_history import parse_rfc3339_ns
from tests.alpaca.test_source import _normalized

if TYPE_CHECKING:
    from ingest.config import StreamName
    from streams.alpaca.credentials import Credentials
    from streams.messages import AnyMessage
    from tests.alpaca.fake_alpaca import FakeAlpaca

pytestmark = pytest.mark.anyio

CASES = [
    ("stocks", "trades", "t"),
    ("stocks", "quotes", "q"),
    ("stocks", "bars", "b"),
    ("crypto", "trades", "t"),
    ("crypto", "quotes", "q"),
    ("crypto", "bars", "b"),
    ("options", "trades", "t"),
    ("news", "news", "n"),
]


class SleepLog:
    """Records the sleeps asked for instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


async def fetch(client: HistoryClient, request: HistoryRequest) -> list[AnyMessage]:
    out: list[AnyMessage] = []
    async for page in client.pages(request):
        assert page.rejects == []
        out += page.messages
    return out


def request_for(stream: StreamName, channel: str, examples: list[dict[str, Any]]) -> HistoryRequest:
    symbols = () if stream == "news" else tuple(sorted({m["S"] for m in examples if "S" in m}))
    return HistoryRequest(stream, channel, symbols, 0, 2**62)


class TestChannels:
    @pytest.mark.parametrize(("stream", "channel", "kind"), CASES)
    async def test_history_equals_what_was_published(
        self,
        fake: FakeAlpaca,
        credentials: Credentials,
        stream: StreamName,
        channel: str,
        kind: str,
    ) -> None:
        """Every published message of the channel comes back, equal to the nanosecond."""
        examples = [m for m in load_examples(stream) if m["T"] == kind]
        fake.history.publish(stream, examples)
        fake.history.page_size = 2
        client = HistoryClient(settings_for(fake), credentials)
        got = await fetch(client, request_for(stream, channel, examples))
        key = "S" if stream != "news" else "id"
        by_key = sorted(_normalized(got), key=lambda m: (m.get(key), m.get("t", m.get("id"))))
        want = (
            client._decoders[stream].decode(__import__("msgspec").json.encode(examples), 0).messages
        )
        expected = sorted(_normalized(want), key=lambda m: (m.get(key), m.get("t", m.get("id"))))
        assert by_key == expected
        pages = len(fake.history.requests)
        assert pages == max(1, -(-len(examples) // 2))

    async def test_window_is_inclusive_and_by_symbol(
        self, fake: FakeAlpaca, credentials: Credentials
    ) -> None:
        """Only the asked symbols, from start to end inclusive, come back."""
        examples = [m for m in load_examples("stocks") if m["T"] == "t"]
        fake.history.publish("stocks", examples)
        client = HistoryClient(settings_for(fake), credentials)
        one = examples[0]
        at = parse_rfc3339_ns(one["t"])
        got = await fetch(client, HistoryRequest("stocks", "trades", (one["S"],), at, at))
        same = [(m["S"], m["i"]) for m in examples if m["S"] == one["S"] and m["t"] == one["t"]]
        assert [(m.S, m.i) for m in got] == same  # type: ignore[union-attr]
        assert len(same) < len(examples)


class TestPacing:
    async def test_requests_are_spaced_under_the_rate_limit(
        self, fake: FakeAlpaca, credentials: Credentials
    ) -> None:
        """At 600 requests a minute, page n waits for its slot (n - 1) x 0.1 s after the first."""
        examples = [m for m in load_examples("stocks") if m["T"] == "q"]
        fake.history.publish("stocks", examples)
        fake.history.page_size = 1
        sleeps = SleepLog()
        client = HistoryClient(
            settings_for(fake, rest_requests_per_minute=600), credentials, sleep=sleeps
        )
        await fetch(client, request_for("stocks", "quotes", examples))
        pages = len(fake.history.requests)
        assert pages == len(examples) > 3
        # The sleep log does not sleep, so each wait runs to the slot from the first request.
        assert sleeps.delays[-1] == pytest.approx((pages - 1) * 0.1, abs=0.05)
        assert len(sleeps.delays) == pages - 1

    async def test_429_waits_retry_after_and_pushes_the_pacer(
        self, fake: FakeAlpaca, credentials: Credentials
    ) -> None:
        """Two 429s with `Retry-After: 2`: two waits of at least 2 s, then the page."""
        examples = [m for m in load_examples("stocks") if m["T"] == "t"]
        fake.history.publish("stocks", examples)
        fake.history.throttle = 2
        fake.history.retry_after = "2"
        sleeps = SleepLog()
        client = HistoryClient(settings_for(fake), credentials, sleep=sleeps)
        got = await fetch(client, request_for("stocks", "trades", examples))
        assert len(got) == len(examples)
        assert len([d for d in sleeps.delays if d >= 1.9]) == 2
        assert len(fake.history.requests) == 3

    async def test_429_without_retry_after_backs_off_exponentially(
        self, fake: FakeAlpaca, credentials: Credentials
    ) -> None:
        """Without `Retry-After` the waits are jittered exponential, capped at the maximum.

        The scheduled waits are read from the retry log: the pacer sleeps only for what is left
        of a wait when the next request comes, and a short jittered one may be over by then.
        """
        fake.history.publish("crypto", load_examples("crypto"))
        fake.history.throttle = 4
        fake.history.retry_after = None
        sleeps = SleepLog()
        settings = settings_for(fake, backoff_initial_seconds=1.0, backoff_max_seconds=4.0)
        client = HistoryClient(settings, credentials, sleep=sleeps)
        with capture_logs() as logs:
            await fetch(client, request_for("crypto", "trades", load_examples("crypto")))
        delays = [e["delay"] for e in logs if e["event"] == "history_retry_scheduled"]
        assert len(delays) == 4
        for n, delay in enumerate(delays):
            assert 0.0 <= delay <= min(4.0, 2.0**n) + 0.001
        assert len(fake.history.requests) == 5
        # Cumulative (the log does not sleep): the pacer never waits past the scheduled total.
        assert all(d <= sum(delays) + 0.01 for d in sleeps.delays)

    async def test_pacer_back_off_delays_the_next_slot(self) -> None:
        """After `back_off(s)` the next slot is at least `s` away."""
        sleeps = SleepLog()
        pacer = RestPacer(60_000, sleep=sleeps)
        await pacer.slot()
        pacer.back_off(5.0)
        await pacer.slot()
        assert sleeps.delays[-1] == pytest.approx(5.0, abs=0.1)


class TestErrors:
    async def test_server_errors_are_retried_then_given_up(
        self, fake: FakeAlpaca, credentials: Credentials
    ) -> None:
        """500s are retried; once every attempt failed the request raises FeedConnectError."""
        fake.history.failures = 100
        client = HistoryClient(settings_for(fake), credentials, sleep=SleepLog())
        with pytest.raises(FeedConnectError, match="500"):
            await fetch(client, HistoryRequest("stocks", "trades", ("AAPL",), 0, 2**62))
        assert len(fake.history.requests) == 8

    async def test_refusal_is_not_retried(self, fake: FakeAlpaca) -> None:
        """403 (bad credentials) is a FeedProtocolError at once."""
        from streams.alpaca.credentials import Credentials

        client = HistoryClient(settings_for(fake), Credentials("x", "y"), sleep=SleepLog())
        with pytest.raises(FeedProtocolError, match=re.escape("refused the request: 403")):
            await fetch(client, HistoryRequest("stocks", "trades", ("AAPL",), 0, 2**62))
        assert len(fake.history.requests) == 1


class TestTimeframes:
    @pytest.mark.parametrize(
        ("seconds", "text"),
        [
            (60.0, "1Min"),
            (300.0, "5Min"),
            (3600.0, "1Hour"),
            (14_400.0, "4Hour"),
            (86_400.0, "1Day"),
        ],
    )
    def test_alpaca_timeframes(self, seconds: float, text: str) -> None:
        """Time-bar widths Alpaca has bars of map to its timeframes."""
        frame = timeframe_of(seconds)
        assert frame is not None
        assert frame.value == text

    @pytest.mark.parametrize("seconds", [5.0, 90.0, 7200.5])
    def test_widths_alpaca_lacks(self, seconds: float) -> None:
        """5 s or 90 s bars have no Alpaca timeframe."""
        assert timeframe_of(seconds) is None
