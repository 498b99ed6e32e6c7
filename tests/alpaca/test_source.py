"""The Alpaca source against the fake server: real sockets on loopback, bounded in time."""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from ingest.config import StreamName, StreamSettings
from ingest.errors import ConfigError, CredentialsError, FeedProtocolError
from ingest.metrics import Metrics
from storage.schemas import parse_timestamps
from streams.alpaca import AlpacaSource, StreamDisabledError
from streams.alpaca.credentials import Credentials
from streams.messages import AnyMessage, FrameDecoder
from tests.alpaca.conftest import ListSink, load_examples, settings_for
from tests.alpaca.fake_alpaca import Drop, FakeAlpaca, Send, SendRaw, Session, Silence

if TYPE_CHECKING:
    from collections.abc import Sequence

    from streams.base import FrameSink

pytestmark = pytest.mark.anyio

PATHS: dict[StreamName, str] = {
    "stocks": "/v2/iex",
    "crypto": "/v1beta3/crypto/us",
    "options": "/v1beta1/indicative",
    "news": "/v1beta1/news",
}
ALL_CHANNELS: dict[StreamName, tuple[str, ...]] = {
    "stocks": ("trades", "quotes", "bars", "updated_bars", "daily_bars", "statuses", "lulds"),
    "crypto": ("trades", "quotes", "bars", "orderbooks"),
    "options": ("trades", "quotes"),
    "news": ("news",),
}


def _stream_settings(stream: StreamName) -> StreamSettings:
    symbols = ("*",) if stream in ("news", "stocks", "crypto") else ("AAPL240315C00172500",)
    return StreamSettings(symbols=symbols, channels=ALL_CHANNELS[stream])


def _expected(stream: StreamName, sent: Sequence[dict[str, Any]]) -> list[AnyMessage]:
    return FrameDecoder(stream).decode(msgspec.json.encode(list(sent)), 0).messages


def _normalized(messages: Sequence[AnyMessage]) -> list[dict[str, Any]]:
    """Messages as plain values, with every timestamp as integer nanoseconds."""
    out: list[dict[str, Any]] = []
    for message in messages:
        value = msgspec.to_builtins(message)
        value.pop("recv_ns")
        for key in ("t", "created_at", "updated_at"):
            if key in value:
                value[key] = parse_timestamps([value[key]])[0].value
        out.append(value)
    return out


async def _run_until(
    source: AlpacaSource, sinks: dict[StreamName, FrameSink], done: Any, limit: float = 10.0
) -> None:
    with anyio.fail_after(limit):
        async with anyio.create_task_group() as tg:
            await tg.start(source.run, sinks)
            await done()
            tg.cancel_scope.cancel()


def _source(
    fake: FakeAlpaca, streams: Sequence[StreamName], credentials: Credentials, **kw: Any
) -> AlpacaSource:
    settings = settings_for(fake, **kw.pop("settings", {}))
    return AlpacaSource(
        settings, {s: _stream_settings(s) for s in streams}, credentials=credentials, **kw
    )


class TestScriptedSessions:
    @pytest.mark.parametrize("stream", ["stocks", "crypto", "options", "news"])
    async def test_every_message_delivered_once_with_equal_values(
        self, fake: FakeAlpaca, credentials: Credentials, stream: StreamName
    ) -> None:
        """Every real example of the stream type arrives once, equal to the nanosecond."""
        examples = load_examples(stream)
        frames = [examples[:3], *[[m] for m in examples[3:]]]
        fake.script(PATHS[stream], Session(steps=[Send(frames)]))
        sink = ListSink()
        source = _source(fake, [stream], credentials)
        await _run_until(source, {stream: sink}, lambda: sink.wait_for(len(examples)))
        assert _normalized(sink.messages) == _normalized(_expected(stream, examples))
        assert all(type(m).__name__ not in ("Success", "Subscription") for m in sink.messages)
        assert fake.max_active[PATHS[stream]] == 1

    async def test_options_are_read_as_msgpack(
        self, fake: FakeAlpaca, credentials: Credentials
    ) -> None:
        """The options endpoint is asked for MessagePack, which the fake refuses JSON without."""
        examples = load_examples("options")
        fake.script(PATHS["options"], Session(steps=[Send([examples])]))
        sink = ListSink()
        source = _source(fake, ["options"], credentials)
        await _run_until(source, {"options": sink}, lambda: sink.wait_for(len(examples)))
        # MessagePack's Timestamp extensions arrive as nanoseconds (JSON would have given text).
        stamps = [m.t for m in sink.messages]  # type: ignore[union-attr]
        assert all(isinstance(t, int) and t > 1_700_000_000 * 10**9 for t in stamps)


class TestReconnect:
    async def test_drops_and_silences_are_recovered_with_resubscription(
        self, fake: FakeAlpaca, credentials: Credentials
    ) -> None:
        """A dropped and a silent session are followed by new sessions that resubscribe."""
        examples = load_examples("stocks")
        a, b, c = examples[0:2], examples[2:4], examples[4:6]
        fake.script(
            PATHS["stocks"],
            Session(steps=[Send([a]), Drop()]),
            Session(steps=[Send([b]), Silence()]),
            Session(steps=[Send([c])]),
        )
        sink = ListSink()
        metrics = Metrics()
        source = _source(
            fake, ["stocks"], credentials, metrics=metrics, settings={"staleness_seconds": 0.3}
        )
        await _run_until(source, {"stocks": sink}, lambda: sink.wait_for(6))
        assert _normalized(sink.messages) == _normalized(_expected("stocks", a + b + c))
        subscribes = fake.subscriptions(PATHS["stocks"])
        assert len(subscribes) == 3
        assert subscribes[0] == subscribes[1] == subscribes[2]
        assert fake.max_active[PATHS["stocks"]] == 1
        assert metrics.reconnects.get("stocks") == 2
        assert metrics.connected.get("stocks") == 1

    async def test_reconnect_delays_grow_exponentially_up_to_the_cap(
        self, fake: FakeAlpaca, credentials: Credentials, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Sessions failing before any data wait initial x 2^n, capped at the maximum."""
        monkeypatch.setattr(random, "uniform", lambda low, high: high)
        fake.script(
            PATHS["stocks"],
            *[Session(auth_error=(500, "internal error")) for _ in range(5)],
            Session(steps=[Send([load_examples("stocks")[:1]])]),
        )
        delays: list[float] = []

        async def sleep(seconds: float) -> None:
            delays.append(seconds)

        sink = ListSink()
        source = _source(
            fake,
            ["stocks"],
            credentials,
            sleep=sleep,
            settings={"backoff_initial_seconds": 1.0, "backoff_max_seconds": 8.0},
        )
        await _run_until(source, {"stocks": sink}, lambda: sink.wait_for(1))
        assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]

    async def test_jittered_delays_stay_within_the_exponential_bound(
        self, fake: FakeAlpaca, credentials: Credentials
    ) -> None:
        """With real jitter every delay lies in [0, min(max, initial x 2^n)]."""
        random.seed(3)
        fake.script(
            PATHS["stocks"],
            *[Session(auth_error=(500, "internal error")) for _ in range(4)],
        )
        delays: list[float] = []

        async def sleep(seconds: float) -> None:
            delays.append(seconds)

        sink = ListSink()
        source = _source(
            fake,
            ["stocks"],
            credentials,
            sleep=sleep,
            settings={"backoff_initial_seconds": 1.0, "backoff_max_seconds": 4.0},
        )
        await _run_until(source, {"stocks": sink}, _noop)
        assert len(delays) == 4
        for n, delay in enumerate(delays):
            assert 0.0 <= delay <= min(4.0, 2.0**n)

    async def test_connection_limit_waits_the_long_backoff_then_reconnects(
        self, fake: FakeAlpaca, credentials: Credentials
    ) -> None:
        """Error 406 waits `connection_limit_backoff_seconds`, then the stream connects."""
        fake.script(
            PATHS["crypto"],
            Session(auth_error=(406, "connection limit exceeded")),
            Session(steps=[Send([load_examples("crypto")[:1]])]),
        )
        delays: list[float] = []

        async def sleep(seconds: float) -> None:
            delays.append(seconds)

        sink = ListSink()
        source = _source(
            fake,
            ["crypto"],
            credentials,
            sleep=sleep,
            settings={"connection_limit_backoff_seconds": 120.0},
        )
        await _run_until(source, {"crypto": sink}, lambda: sink.wait_for(1))
        assert delays == [120.0]
        assert fake.max_active[PATHS["crypto"]] == 1


async def _noop() -> None:
    await anyio.sleep(0.5)


class TestPermanentErrors:
    async def test_auth_failure_on_the_only_stream_raises_credentials_error(
        self, fake: FakeAlpaca
    ) -> None:
        """Error 402 stops the stream; with no stream left `run` raises `CredentialsError`."""
        source = _source(fake, ["stocks"], Credentials("wrong", "wrong"))
        with anyio.fail_after(10), pytest.raises(CredentialsError, match="error 402"):
            await source.run({"stocks": ListSink()})
        assert "wrong" not in repr(source)

    async def test_auth_failure_leaves_other_streams_running(
        self, fake: FakeAlpaca, credentials: Credentials
    ) -> None:
        """402 on one stream stops only that stream."""
        fake.script(PATHS["news"], Session(auth_error=(402, "auth failed")))
        fake.script(PATHS["crypto"], Session(steps=[Send([load_examples("crypto")[:2]])]))
        sink = ListSink()
        source = _source(fake, ["news", "crypto"], credentials)
        await _run_until(source, {"news": ListSink(), "crypto": sink}, lambda: sink.wait_for(2))
        assert isinstance(source.stopped["news"], CredentialsError)

    async def test_insufficient_subscription_disables_only_that_stream(
        self, fake: FakeAlpaca, credentials: Credentials
    ) -> None:
        """Error 409 disables the stream with a clear message while the others go on."""
        fake.script(PATHS["stocks"], Session(auth_error=(409, "insufficient subscription")))
        fake.script(PATHS["crypto"], Session(steps=[Send([load_examples("crypto")[:2]])]))
        sink = ListSink()
        source = _source(fake, ["stocks", "crypto"], credentials)
        await _run_until(source, {"stocks": ListSink(), "crypto": sink}, lambda: sink.wait_for(2))
        stopped = source.stopped["stocks"]
        assert isinstance(stopped, StreamDisabledError)
        assert "stocks stream disabled" in str(stopped)
        assert fake.connections[PATHS["stocks"]] == 1

    async def test_every_stream_disabled_raises_feed_protocol_error(
        self, fake: FakeAlpaca, credentials: Credentials
    ) -> None:
        """With every stream refused by 409, `run` ends with `FeedProtocolError`."""
        fake.script(PATHS["stocks"], Session(auth_error=(409, "insufficient subscription")))
        source = _source(fake, ["stocks"], credentials)
        with anyio.fail_after(10), pytest.raises(FeedProtocolError, match="no Alpaca stream"):
            await source.run({"stocks": ListSink()})


class TestBadFrames:
    async def test_malformed_frame_is_rejected_and_the_stream_goes_on(
        self, fake: FakeAlpaca, credentials: Credentials
    ) -> None:
        """A frame that is not JSON is delivered as a reject; later messages still arrive."""
        examples = load_examples("stocks")[:2]
        fake.script(PATHS["stocks"], Session(steps=[SendRaw(b"[{not json"), Send([examples])]))
        sink = ListSink()
        source = _source(fake, ["stocks"], credentials)
        await _run_until(source, {"stocks": sink}, lambda: sink.wait_for(2, rejects=1))
        assert sink.frames[0].rejects[0].reason == "malformed_frame"


class TestConfigErrors:
    async def test_star_option_quotes_is_a_config_error_naming_the_key(
        self, fake: FakeAlpaca, credentials: Credentials
    ) -> None:
        """Error 413 (`*` for option quotes) stops the stream with a message naming the key."""
        source = AlpacaSource(
            settings_for(fake),
            {"options": StreamSettings(symbols=("*",), channels=("quotes",))},
            credentials=credentials,
        )
        key = re.escape("streams.options.symbols")
        with anyio.fail_after(10), pytest.raises(ConfigError, match=key):
            await source.run({"options": ListSink()})
