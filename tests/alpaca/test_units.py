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
from streams.messages import FrameDecoder, format_msgpack_timestamp
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
                assert type(got) is type(want)  # the wire twin became its target in place
                if hasattr(want, "t"):
                    stamps = parse_timestamps([got.t, want.t])  # type: ignore[union-attr]
                    assert stamps[0] == stamps[1]
                    got.t = want.t  # type: ignore[union-attr]
                assert got == want

    @pytest.mark.parametrize(
        ("data", "text"),
        [
            pytest.param(b"\x00\x00\x00\x0a", "1970-01-01T00:00:10.000000000Z", id="32-bit"),
            pytest.param(
                ((10 << 34) | 10).to_bytes(8, "big"), "1970-01-01T00:00:10.000000010Z", id="64-bit"
            ),
            pytest.param(
                (5).to_bytes(4, "big") + (-1).to_bytes(8, "big", signed=True),
                "1969-12-31T23:59:59.000000005Z",
                id="96-bit",
            ),
        ],
    )
    def test_timestamp_formats(self, data: bytes, text: str) -> None:
        """All three Timestamp extension layouts give RFC 3339 with nanoseconds."""
        assert format_msgpack_timestamp(msgspec.msgpack.Ext(-1, data)) == text

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
