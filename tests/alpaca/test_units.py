"""Credentials, the MessagePack decode path, recording and contract discovery."""

from __future__ import annotations

import base64
import json
import re
from datetime import date
from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest

from ingest.config import OptionsSettings, StreamName, StreamSettings
from ingest.errors import CredentialsError
from storage.schemas import parse_timestamps
from streams.alpaca import AlpacaSource
from streams.alpaca.credentials import Credentials, load_credentials
from streams.discovery import discover_option_contracts
from streams.messages import (
    FrameDecoder,
    OptionQuote,
    OptionTrade,
    format_stamp,
    msgpack_timestamp_ns,
)
from streams.recorder import open_recorder
from tests.alpaca.conftest import DATA, ListSink, load_examples, settings_for
from tests.alpaca.fake_alpaca import FakeAlpaca, Send, Session, make_contract

if TYPE_CHECKING:
    from pathlib import Path
from typing import Any

pytestmark = pytest.mark.anyio


class TestCredentials:
    def test_missing_variables_are_named_in_one_line(self) -> None:
        """Both missing variables are named, in one line."""
        msg = (
            "Alpaca credentials missing: set the environment variables "
            "APCA_API_KEY_ID and APCA_API_SECRET_KEY"
        )
        with pytest.raises(CredentialsError, match=re.escape(msg)):
            load_credentials({})

    def test_one_missing_variable_is_named(self) -> None:
        """An empty secret is reported as missing by its name."""
        with pytest.raises(CredentialsError, match=r"variable APCA_API_SECRET_KEY$"):
            load_credentials({"APCA_API_KEY_ID": "k", "APCA_API_SECRET_KEY": " "})

    def test_values_never_appear_in_repr(self) -> None:
        """The repr and str of credentials redact both values."""
        credentials = load_credentials(
            {"APCA_API_KEY_ID": "KEYVALUE", "APCA_API_SECRET_KEY": "SECRETVALUE"}
        )
        assert "KEYVALUE" not in repr(credentials) + str(credentials)
        assert "SECRETVALUE" not in repr(credentials) + str(credentials)

    def test_source_reads_the_environment_when_not_given(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Constructing the source without credentials and without the variables fails clearly."""
        monkeypatch.delenv("APCA_API_KEY_ID", raising=False)
        monkeypatch.delenv("APCA_API_SECRET_KEY", raising=False)
        with pytest.raises(CredentialsError, match="APCA_API_KEY_ID"):
            AlpacaSource(settings_for(FakeAlpaca()), {})


class TestMsgpackDecoding:
    def test_option_fixtures_decode_to_their_json_equivalents(self) -> None:
        """The msgpack option frames decode to the structs of their JSON twins."""
        document = json.loads((DATA / "option_examples.msgpack.json").read_text())
        decoder = FrameDecoder("options", "msgpack")
        twin = FrameDecoder("options")
        for frame in document["frames"]:
            if frame["name"].startswith("stock"):
                continue
            decoded = decoder.decode(base64.b64decode(frame["msgpack_base64"]), 1)
            expected = twin.decode(json.dumps(frame["json_equivalent"]).encode(), 1)
            assert not decoded.rejects
            for got, want in zip(decoded.messages, expected.messages, strict=True):
                assert type(got) is type(want)
                if hasattr(want, "t"):
                    stamps = parse_timestamps([got.t, want.t])  # type: ignore[union-attr]
                    assert stamps[0] == stamps[1]
                    got.t = want.t  # type: ignore[union-attr]
                assert got == want

    @pytest.mark.parametrize(
        ("data", "ns", "text"),
        [
            pytest.param(
                b"\x00\x00\x00\x0a", 10_000_000_000, "1970-01-01T00:00:10.000000000Z", id="32-bit"
            ),
            pytest.param(
                ((10 << 34) | 10).to_bytes(8, "big"),
                10_000_000_010,
                "1970-01-01T00:00:10.000000010Z",
                id="64-bit",
            ),
            pytest.param(
                (5).to_bytes(4, "big") + (-1).to_bytes(8, "big", signed=True),
                -999_999_995,
                "1969-12-31T23:59:59.000000005Z",
                id="96-bit",
            ),
        ],
    )
    def test_timestamp_formats(self, data: bytes, ns: int, text: str) -> None:
        """All three Timestamp extension layouts give exact nanoseconds, in a frame or alone."""
        ext = msgspec.msgpack.Ext(-1, data)
        assert msgpack_timestamp_ns(ext) == ns
        assert format_stamp(ns) == text
        trade = {"T": "t", "S": "X", "t": ext, "p": 1.0, "s": 1}
        decoded = FrameDecoder("options", "msgpack").decode(msgspec.msgpack.encode([trade]), 7)
        assert [m.t for m in decoded.messages] == [ns]  # type: ignore[union-attr]

    def test_a_frame_of_mixed_forms_and_types_converts_every_stamp(self) -> None:
        """Stamps in any form, and messages without one, all come out right in one frame.

        The common case (every stamp an 8-byte extension) is taken message by message until a
        message it does not cover; the rest of the frame must still be converted once.
        """
        at = 1_710_164_135_133_122_560
        eight = msgspec.msgpack.Ext(-1, ((at % 10**9) << 34 | at // 10**9).to_bytes(8, "big"))
        four = msgspec.msgpack.Ext(-1, (at // 10**9).to_bytes(4, "big"))
        trade = {"T": "t", "S": "X", "p": 1.0, "s": 1}
        quote = {"T": "q", "S": "X", "bp": 1.0, "bs": 1, "ap": 2.0, "as": 1}
        frame = [
            {**trade, "t": eight},
            {**quote, "t": eight},
            {**trade, "t": four},
            {"T": "success", "msg": "authenticated"},
            {**trade, "t": eight},
            {**trade, "t": at + 1},  # already nanoseconds
            {**trade, "t": "2024-03-11T13:35:35.5Z"},  # text stays text
        ]
        decoded = FrameDecoder("options", "msgpack").decode(msgspec.msgpack.encode(frame), 7)
        assert not decoded.rejects
        stamps = [getattr(m, "t", None) for m in decoded.messages]
        second = at // 10**9 * 10**9
        assert stamps == [at, at, second, None, at, at + 1, "2024-03-11T13:35:35.5Z"]
        assert {m.recv_ns for m in decoded.messages} == {7}
        assert [type(m) for m in decoded.messages][:2] == [OptionTrade, OptionQuote]

    @pytest.mark.parametrize(
        "ext",
        [
            pytest.param(msgspec.msgpack.Ext(-1, (10**9 << 34).to_bytes(8, "big")), id="nanos"),
            pytest.param(msgspec.msgpack.Ext(5, (10 << 34).to_bytes(8, "big")), id="not-a-time"),
            pytest.param(msgspec.msgpack.Ext(-1, b"\x01"), id="length"),
        ],
    )
    def test_a_malformed_stamp_is_rejected_among_good_ones(self, ext: msgspec.msgpack.Ext) -> None:
        """Nanoseconds past a billion, another extension type or a bad length: bad_timestamp."""
        good = {"T": "t", "S": "X", "p": 1.0, "s": 1, "t": (10 << 34 | 10).to_bytes(8, "big")}
        good["t"] = msgspec.msgpack.Ext(-1, good["t"])  # type: ignore[arg-type]
        frame = [good, good, {**good, "t": ext}, good]
        decoded = FrameDecoder("options", "msgpack").decode(msgspec.msgpack.encode(frame), 7)
        assert [m.t for m in decoded.messages] == [10_000_000_010] * 3  # type: ignore[union-attr]
        assert [r.reason for r in decoded.rejects] == ["bad_timestamp"]

    def test_news_stamps_convert_too(self) -> None:
        """An article's two stamps, were news ever sent as MessagePack, become nanoseconds."""
        created = msgspec.msgpack.Ext(-1, (20).to_bytes(4, "big"))
        article = {"T": "n", "id": 1, "created_at": created, "updated_at": "2024-01-01T00:00:00Z"}
        decoded = FrameDecoder("news", "msgpack").decode(msgspec.msgpack.encode([article]), 7)
        assert [(a.created_at, a.updated_at) for a in decoded.messages] == [  # type: ignore[union-attr]
            (20_000_000_000, "2024-01-01T00:00:00Z")
        ]

    def test_bad_message_in_a_frame_is_rejected_alone(self) -> None:
        """One message with a bad timestamp extension is rejected; its neighbour decodes."""
        good = {
            "T": "t",
            "S": "X",
            "t": msgspec.msgpack.Ext(-1, b"\x00\x00\x00\x01"),
            "p": 1.0,
            "s": 1,
        }
        bad = {**good, "t": msgspec.msgpack.Ext(-1, b"\x01")}
        decoded = FrameDecoder("options", "msgpack").decode(msgspec.msgpack.encode([good, bad]), 7)
        assert len(decoded.messages) == 1
        assert decoded.messages[0].recv_ns == 7
        assert [r.reason for r in decoded.rejects] == ["bad_timestamp"]


class TestRecording:
    @pytest.mark.parametrize("stream", ["stocks", "options"])
    async def test_replaying_the_recording_gives_the_same_messages(
        self, fake: FakeAlpaca, credentials: Credentials, tmp_path: Path, stream: StreamName
    ) -> None:
        """Each recorded line decodes through `FrameDecoder` to the messages delivered live."""
        examples = load_examples(stream)
        path = "/v2/iex" if stream == "stocks" else "/v1beta1/indicative"
        fake.script(path, Session(steps=[Send([examples[:2], examples[2:]])]))
        sink = ListSink()
        symbols = ("*",) if stream == "stocks" else ("AAPL240315C00172500",)
        async with open_recorder(tmp_path) as recorder:
            source = AlpacaSource(
                settings_for(fake),
                {stream: StreamSettings(symbols=symbols, channels=("trades", "quotes"))},
                credentials=credentials,
                recorder=recorder,
            )
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    await tg.start(source.run, {stream: sink})
                    await sink.wait_for(len(examples))
                    tg.cancel_scope.cancel()
        lines = await anyio.to_thread.run_sync(_read_recording, tmp_path)
        assert {line["stream"] for line in lines} == {stream}
        assert all(re.match(r"^\d{4}-.*T.*\.\d{9}Z$", line["recv_ts"]) for line in lines)
        decoder = FrameDecoder(stream)
        replayed = [
            m
            for line in lines
            for m in decoder.decode(json.dumps(line["frame"]).encode(), 0).messages
            if type(m).__name__ not in ("Success", "Subscription", "Error")
        ]
        live = [msgspec.structs.replace(m, recv_ns=0) for m in sink.messages]
        assert replayed == live


def _read_recording(directory: Path) -> list[dict[str, Any]]:
    (file,) = directory.iterdir()
    return [json.loads(line) for line in file.read_text().splitlines()]


class TestDiscovery:
    async def test_contracts_within_expiry_and_strike_band_across_pages(
        self, fake: FakeAlpaca, credentials: Credentials
    ) -> None:
        """Discovery follows `next_page_token` and keeps expiry and strike within bounds."""
        fake.latest_trades["AAPL"] = {
            "t": "2024-03-11T13:35:35.13312256Z",
            "x": "V",
            "p": 170.0,
            "s": 100,
            "c": ["@"],
            "i": 1,
            "z": "C",
        }
        inside = [
            "AAPL240315C00160000",
            "AAPL240315P00170000",
            "AAPL240322C00175000",
            "AAPL240405C00185000",
            "AAPL240405P00155000",
        ]
        outside = ["AAPL240315C00200000", "AAPL240315P00140000", "AAPL240601C00170000"]
        fake.contracts = [make_contract(s) for s in inside + outside]
        options = OptionsSettings(
            symbols=(), channels=("trades",), underlyings=("AAPL",), expiry_days=30, strike_band=0.1
        )
        with anyio.fail_after(20):
            found = await discover_option_contracts(
                settings_for(fake), options, credentials, today=date(2024, 3, 11)
            )
        assert found == sorted(inside)
        pages = [q for p, q in fake.rest_requests if p == "/v2/options/contracts"]
        assert len(pages) == 3
        assert [q.get("page_token") for q in pages] == [None, "2", "4"]

    async def test_options_stream_subscribes_the_discovered_contracts(
        self, fake: FakeAlpaca, credentials: Credentials
    ) -> None:
        """With only underlyings configured, the options stream subscribes what was discovered."""
        fake.latest_trades["SPY"] = {
            "t": "2024-03-11T13:35:35Z",
            "x": "V",
            "p": 500.0,
            "s": 1,
            "i": 2,
        }
        symbol = "SPY" + date.today().strftime("%y%m%d") + "C00500000"
        fake.contracts = [make_contract(symbol)]
        options = OptionsSettings(symbols=(), channels=("trades", "quotes"), underlyings=("SPY",))
        source = AlpacaSource(settings_for(fake), {"options": options}, credentials=credentials)
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                await tg.start(source.run, {"options": ListSink()})
                tg.cancel_scope.cancel()
        (subscribe,) = fake.subscriptions("/v1beta1/indicative")
        assert subscribe == {"trades": [symbol], "quotes": [symbol]}
