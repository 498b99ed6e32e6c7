"""The decode path: whole frames fast, bad messages quarantined one by one."""

from __future__ import annotations

import struct

import msgspec
import pytest

from streams.messages import CryptoTrade, FrameDecoder, OptionTrade, StockQuote, StockTrade

FRAME = (
    b'[{"T":"t","i":96921,"S":"AAPL","x":"D","p":126.55,"s":1,'
    b'"t":"2021-02-22T15:51:44.208Z","c":["@","I"],"z":"C"},'
    b'{"T":"q","S":"AMD","bx":"U","bp":87.66,"bs":1,"ax":"Q","ap":87.68,"as":4,'
    b'"t":"2021-02-22T15:51:45.335689322Z","c":["R"],"z":"C"}]'
)


class TestFastPath:
    def test_mixed_frame_decodes_in_order(self) -> None:
        """A frame of mixed types decodes to typed structs stamped with the receive time."""
        decoded = FrameDecoder("stocks").decode(FRAME, 42)
        assert decoded.rejects == []
        trade, quote = decoded.messages
        assert isinstance(trade, StockTrade)
        assert isinstance(quote, StockQuote)
        assert (trade.i, trade.p, trade.c, trade.recv_ns) == (96921, 126.55, ("@", "I"), 42)
        assert quote.as_ == 4

    def test_large_ids_stay_exact(self) -> None:
        """Crypto trade ids near 2**62 survive as ints."""
        frame = (
            b'[{"T":"t","S":"AVAX/USD","p":47.299,"s":29.205707815,'
            b'"t":"2024-03-12T10:27:48.858228144Z","i":3447222699101865076,"tks":"S"}]'
        )
        (trade,) = FrameDecoder("crypto").decode(frame, 0).messages
        assert isinstance(trade, CryptoTrade)
        assert trade.i == 3447222699101865076

    def test_option_condition_is_a_string(self) -> None:
        """Option trades carry a single condition string."""
        frame = (
            b'[{"T":"t","S":"AAPL240315C00172500","t":"2024-03-11T13:35:35.13312256Z",'
            b'"p":2.84,"s":1,"x":"N","c":"S"}]'
        )
        (trade,) = FrameDecoder("options").decode(frame, 0).messages
        assert isinstance(trade, OptionTrade)
        assert trade.c == "S"


BAD = [
    pytest.param(b'{"T":"t"}', "malformed_frame", id="not-an-array"),
    pytest.param(b'[{"T":"t",', "malformed_frame", id="truncated"),
    pytest.param(b'[{"T":"zz","S":"A"}]', "unknown_type", id="unknown-type"),
    pytest.param(b'[{"S":"A"}]', "missing_type", id="missing-type"),
    pytest.param(
        b'[{"T":"t","S":"A","i":1,"x":"V","p":-1,"s":1,"t":"2024-01-01T00:00:00Z"}]',
        "bad_value",
        id="negative-price",
    ),
    pytest.param(
        b'[{"T":"t","S":"A","i":1,"x":"V","p":1e999,"s":1,"t":"2024-01-01T00:00:00Z"}]',
        "bad_value",
        id="infinite-price",
    ),
    pytest.param(b'[{"T":"t","S":"A","x":"V","p":1,"s":1}]', "missing_field", id="missing"),
    pytest.param(
        b'[{"T":"t","S":"A","i":"x","x":"V","p":1,"s":1,"t":"2024-01-01T00:00:00Z"}]',
        "wrong_type",
        id="wrong-type",
    ),
    pytest.param(
        b'[{"T":"t","S":"A","i":1,"x":"V","p":1,"s":1e16,"t":"2024-01-01T00:00:00Z"}]',
        "bad_value",
        id="absurd-size",
    ),
    pytest.param(
        b'[{"T":"t","S":"A","i":1e30,"x":"V","p":1,"s":1,"t":"2024-01-01T00:00:00Z"}]',
        "wrong_type",
        id="float-id",
    ),
    pytest.param(
        b'[{"T":"t","S":"A","i":9223372036854775808,"x":"V","p":1,"s":1,"t":"2024-01-01T00:00:00Z"}]',
        "bad_value",
        id="id-beyond-int64",
    ),
    pytest.param(
        b'[{"T":"t","S":"","i":1,"x":"V","p":1,"s":1,"t":"x"}]', "bad_value", id="no-symbol"
    ),
    pytest.param(b"[7]", "invalid_message", id="not-an-object"),
]


class TestQuarantine:
    @pytest.mark.parametrize(("frame", "reason"), BAD)
    def test_bad_input_is_rejected_with_reason(self, frame: bytes, reason: str) -> None:
        """Each kind of bad input is rejected with a stable reason, never raised."""
        decoded = FrameDecoder("stocks").decode(frame, 0)
        assert decoded.messages == []
        assert [r.reason for r in decoded.rejects] == [reason]

    def test_oversized_frame_is_refused_whole(self) -> None:
        """A frame over the configured cap is one `oversized_frame` reject with its raw bytes."""
        decoded = FrameDecoder("stocks", max_bytes=len(FRAME) - 1).decode(FRAME, 0)
        assert decoded.messages == []
        assert [(r.reason, r.raw) for r in decoded.rejects] == [("oversized_frame", FRAME)]
        assert len(FrameDecoder("stocks", max_bytes=len(FRAME)).decode(FRAME, 0).messages) == 2

    def test_msgpack_timestamp_past_year_9999_decodes_to_nanoseconds(self) -> None:
        """A MessagePack timestamp no calendar holds is exact nanoseconds here, not text.

        Whether it is plausible is the screen's call (`absurd_timestamp`, tests/test_screen.py).
        """
        trade = {"T": "t", "S": "AAPL240315C00172500", "p": 1.0, "s": 1.0, "x": "N", "c": "S"}
        stamp = msgspec.msgpack.Ext(-1, struct.pack(">Iq", 0, 2**62))
        frame = msgspec.msgpack.encode([{**trade, "t": stamp}])
        decoded = FrameDecoder("options", "msgpack").decode(frame, 0)
        assert decoded.rejects == []
        assert [m.t for m in decoded.messages] == [2**62 * 10**9]  # type: ignore[union-attr]

    def test_one_bad_message_spares_the_rest(self) -> None:
        """The good messages of a frame with one bad message are kept, in order."""
        frame = FRAME[:-1] + b',{"T":"zz"}]'
        decoded = FrameDecoder("stocks").decode(frame, 0)
        assert [type(m) for m in decoded.messages] == [StockTrade, StockQuote]
        assert [r.raw for r in decoded.rejects] == [b'{"T":"zz"}']
