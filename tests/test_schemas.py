"""Every table's converter on a real Alpaca message of its type (from Alpaca's docs)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import pytest

from storage.schemas import table_for, table_spec, tables_of
from streams.messages import FrameDecoder

if TYPE_CHECKING:
    from ingest.config import StreamName
    from storage.schemas import MarketConverter

UTC = dt.UTC
CASES: list[Any] = [
    pytest.param(
        "stocks",
        b'{"T":"s","S":"AAPL","sc":"H","sm":"Trading Halt","rc":"T12","rm":"Halted",'
        b'"t":"2021-02-22T19:15:00Z","z":"C"}',
        {"table": "statuses", "status_code": "H", "reason_code": "T12", "tape": "C"},
        id="status",
    ),
    pytest.param(
        "stocks",
        b'{"T":"l","S":"IONM","u":3.24,"d":2.65,"i":"B",'
        b'"t":"2023-04-06T13:34:45.565004401Z","z":"C"}',
        {"table": "lulds", "limit_up": 3.24, "limit_down": 2.65, "indicator": "B"},
        id="luld",
    ),
    pytest.param(
        "stocks",
        b'{"T":"c","S":"EEM","x":"M","oi":52983525033527,"op":39.1582,"os":440000,'
        b'"oc":[" ","7"],"ci":52983525034326,"cp":39.1809,"cs":440000,"cc":[" ","7"],'
        b'"z":"B","t":"2023-04-06T14:25:06.542305024Z"}',
        {"table": "corrections", "orig_trade_id": 52983525033527, "corr_price": 39.1809},
        id="correction",
    ),
    pytest.param(
        "stocks",
        b'{"T":"x","S":"GOOGL","i":465,"x":"D","p":105.31,"s":300,"a":"C","z":"C",'
        b'"t":"2023-04-06T13:15:42.83540958Z"}',
        {"table": "cancels", "trade_id": 465, "action": "C", "size": 300.0},
        id="cancel",
    ),
    pytest.param(
        "stocks",
        b'{"T":"i","S":"INAQU","p":9.12,"z":"C","t":"2024-12-13T19:58:09.242138635Z"}',
        {"table": "imbalances", "price": 9.12},
        id="imbalance",
    ),
    pytest.param(
        "stocks",
        b'{"T":"u","S":"SPY","o":388.985,"h":389.13,"l":388.975,"c":389.12,"v":49378,'
        b'"n":461,"vw":389.062639,"t":"2021-02-22T19:15:00Z"}',
        {"table": "vendor_bars", "bar_kind": "updated", "trade_count": 461, "vwap": 389.062639},
        id="updated-bar",
    ),
    pytest.param(
        "crypto",
        b'{"T":"o","S":"BTC/USD","t":"2024-03-12T10:38:50.79613221Z",'
        b'"b":[{"p":71859.53,"s":0.27994}],"a":[{"p":71939.7,"s":0.83953}],"r":true}',
        {
            "table": "orderbooks",
            "bids": [{"price": 71859.53, "size": 0.27994}],
            "asks": [{"price": 71939.7, "size": 0.83953}],
            "reset": True,
        },
        id="orderbook",
    ),
    pytest.param(
        "crypto",
        b'{"T":"q","S":"BAT/USD","bp":0.35718,"bs":13445.46,"ap":0.3581,"as":13561.902,'
        b'"t":"2024-03-12T10:29:43.111588173Z"}',
        {"table": "quotes", "bid_price": 0.35718, "ask_size": 13561.902, "tape": None},
        id="crypto-quote",
    ),
    pytest.param(
        "options",
        b'{"T":"q","S":"SPXW240327P04925000","t":"2024-03-12T11:59:38.897261568Z","bx":"C",'
        b'"bp":9.46,"bs":53,"ax":"C","ap":9.66,"as":38,"c":"A"}',
        {
            "table": "quotes",
            "underlying": "SPXW",
            "expiration": dt.date(2024, 3, 27),
            "right": "P",
            "strike": 4925.0,
            "conditions": ["A"],
        },
        id="option-quote",
    ),
]


class TestConverters:
    @pytest.mark.parametrize(("stream", "raw", "expected"), CASES)
    def test_message_becomes_a_row(
        self, stream: StreamName, raw: bytes, expected: dict[str, Any]
    ) -> None:
        """The message decodes, maps to its table and converts with the expected values."""
        decoded = FrameDecoder(stream).decode(b"[" + raw + b"]", 1_700_000_000_000_000_000)
        (message,) = decoded.messages
        table = table_for(stream, type(message))
        assert table is not None
        assert table == expected.pop("table")
        spec = table_spec(stream, table, ())
        (row,) = spec.to_table([message]).to_pylist()
        for key, value in expected.items():
            assert row[key] == value, key
        assert row["recv_ts"] == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)

    def test_every_table_has_a_spec(self) -> None:
        """Each stream's tables resolve to a schema with the columns SPEC section 6 requires."""
        for stream in ("stocks", "crypto", "options", "news"):
            for table in tables_of(stream):
                names = table_spec(stream, table, ("sma_5",)).schema.names
                assert "recv_ts" in names
                if table != "articles":
                    assert names[:2] == ["symbol", "ts"]

    def test_known_times_as_nanoseconds_are_the_same_column(self) -> None:
        """A flush's gathered times (int64 nanoseconds, a slice too) convert as parsed text."""
        raw = (
            b'[{"T":"t","S":"AAPL","i":1,"x":"V","p":10.5,"s":3,"c":["@"],"z":"C",'
            b'"t":"2024-07-01T10:00:00.123456789Z"},'
            b'{"T":"t","S":"MSFT","i":2,"x":"V","p":20.5,"s":4,"c":["@"],"z":"C",'
            b'"t":"2024-07-01T10:00:01Z"}]'
        )
        messages = FrameDecoder("stocks").decode(raw, 1_700_000_000_000_000_000).messages
        converter = cast("MarketConverter", table_spec("stocks", "trades", ()).to_table)
        gathered = np.array([0, 1_719_828_000_123_456_789, 1_719_828_001_000_000_000])[1:]
        recv = np.full(2, 1_700_000_000_000_000_000, np.int64)
        fast = converter.with_columns(messages, {"ts": gathered, "recv_ts": recv})
        assert fast.equals(converter(messages))
        assert fast.schema.field("ts").type == pa.timestamp("ns", tz="UTC")
