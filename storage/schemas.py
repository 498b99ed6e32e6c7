"""Every table's Arrow schema and its conversion from records, in one place.

A `TableSpec` says how a table looks on disk (schema, the time column that picks the date
partition, the sort order) and how a buffer of records becomes an Arrow table. Conversion runs once
per sealed file over the whole buffer, column by column, so per-record work is one attribute read
per field. Schema evolution rules are in `docs/schema.md`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa

from streams import messages as m
from streams.occ import parse_occ

if TYPE_CHECKING:
    from ingest.config import StreamName

__all__ = [
    "TIMESTAMP",
    "TableSpec",
    "bars_spec",
    "parse_timestamps",
    "table_for",
    "table_spec",
    "tables_of",
]

TIMESTAMP: Final = pa.timestamp("ns", tz="UTC")
SYMBOL: Final = pa.dictionary(pa.int32(), pa.string())
STRINGS: Final = pa.list_(pa.string())
LEVELS: Final = pa.list_(pa.struct([("price", pa.float64()), ("size", pa.float64())]))

Converter = Callable[[Sequence[Any]], pa.Table]


@dataclass(frozen=True, slots=True)
class TableSpec:
    """How one table is laid out and built."""

    name: str
    schema: pa.Schema
    to_table: Converter
    time_column: str = "ts"
    sort_by: tuple[str, ...] = ("symbol", "ts")


def parse_timestamps(values: Sequence[str]) -> pa.Array[Any]:
    """RFC 3339 strings (any number of fractional digits) to `timestamp[ns, UTC]`, in bulk."""
    return pa.array(values, pa.string()).cast(TIMESTAMP)


def _recv(records: Sequence[Any]) -> pa.Array[Any]:
    return pa.array([r.recv_ns for r in records], TIMESTAMP)


def _build(schema: pa.Schema, columns: dict[str, Any]) -> pa.Table:
    arrays = []
    for f in schema:
        value = columns[f.name]
        arrays.append(value if isinstance(value, pa.Array) else pa.array(value, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _symbols(records: Sequence[Any]) -> pa.Array[Any]:
    return pa.array([r.S for r in records], pa.string()).dictionary_encode()


# --- schemas -----------------------------------------------------------------------------------

_OCC_FIELDS: Final[list[tuple[str, pa.DataType]]] = [
    ("underlying", pa.string()),
    ("expiration", pa.date32()),
    ("right", pa.string()),
    ("strike", pa.float64()),
]


def _schema(fields: list[tuple[str, pa.DataType]]) -> pa.Schema:
    head = [("symbol", SYMBOL), ("ts", TIMESTAMP)]
    return pa.schema([*head, *fields, ("recv_ts", TIMESTAMP)])


TRADES: Final = _schema(
    [
        ("price", pa.float64()),
        ("size", pa.float64()),
        ("trade_id", pa.int64()),
        ("exchange", pa.string()),
        ("conditions", STRINGS),
        ("tape", pa.string()),
        ("taker_side", pa.string()),
    ]
)
QUOTES: Final = _schema(
    [
        ("bid_price", pa.float64()),
        ("bid_size", pa.float64()),
        ("ask_price", pa.float64()),
        ("ask_size", pa.float64()),
        ("bid_exchange", pa.string()),
        ("ask_exchange", pa.string()),
        ("conditions", STRINGS),
        ("tape", pa.string()),
    ]
)
OPTION_TRADES: Final = pa.schema(
    [*TRADES][:-1] + [pa.field(n, t) for n, t in _OCC_FIELDS] + [TRADES.field("recv_ts")]
)
OPTION_QUOTES: Final = pa.schema(
    [*QUOTES][:-1] + [pa.field(n, t) for n, t in _OCC_FIELDS] + [QUOTES.field("recv_ts")]
)
VENDOR_BARS: Final = _schema(
    [
        ("bar_kind", pa.string()),
        ("open", pa.float64()),
        ("high", pa.float64()),
        ("low", pa.float64()),
        ("close", pa.float64()),
        ("volume", pa.float64()),
        ("trade_count", pa.int64()),
        ("vwap", pa.float64()),
    ]
)
STATUSES: Final = _schema(
    [
        ("status_code", pa.string()),
        ("status_message", pa.string()),
        ("reason_code", pa.string()),
        ("reason_message", pa.string()),
        ("tape", pa.string()),
    ]
)
LULDS: Final = _schema(
    [
        ("limit_up", pa.float64()),
        ("limit_down", pa.float64()),
        ("indicator", pa.string()),
        ("tape", pa.string()),
    ]
)
CORRECTIONS: Final = _schema(
    [
        ("exchange", pa.string()),
        ("orig_trade_id", pa.int64()),
        ("orig_price", pa.float64()),
        ("orig_size", pa.float64()),
        ("orig_conditions", STRINGS),
        ("corr_trade_id", pa.int64()),
        ("corr_price", pa.float64()),
        ("corr_size", pa.float64()),
        ("corr_conditions", STRINGS),
        ("tape", pa.string()),
    ]
)
CANCELS: Final = _schema(
    [
        ("trade_id", pa.int64()),
        ("exchange", pa.string()),
        ("price", pa.float64()),
        ("size", pa.float64()),
        ("action", pa.string()),
        ("tape", pa.string()),
    ]
)
IMBALANCES: Final = _schema([("price", pa.float64()), ("tape", pa.string())])
ORDERBOOKS: Final = _schema([("bids", LEVELS), ("asks", LEVELS), ("reset", pa.bool_())])
ANOMALIES: Final = _schema(
    [
        ("price", pa.float64()),
        ("zscore", pa.float64()),
        ("method", pa.string()),
        ("window", pa.int32()),
        ("threshold", pa.float64()),
    ]
)
_ARTICLE_FIELDS: Final[
    list[tuple[str, pa.DataType]]
] = [  # no symbol column: an article names several symbols
    ("id", pa.int64()),
    ("headline", pa.string()),
    ("summary", pa.string()),
    ("author", pa.string()),
    ("source", pa.string()),
    ("url", pa.string()),
    ("symbols", STRINGS),
    ("created_at", TIMESTAMP),
    ("updated_at", TIMESTAMP),
    ("content", pa.string()),
    ("recv_ts", TIMESTAMP),
]
ARTICLES: Final = pa.schema(_ARTICLE_FIELDS)


# --- converters --------------------------------------------------------------------------------


def _stock_trades(rs: Sequence[m.StockTrade]) -> pa.Table:
    return _build(
        TRADES,
        {
            "symbol": _symbols(rs),
            "ts": parse_timestamps([r.t for r in rs]),
            "price": [r.p for r in rs],
            "size": [r.s for r in rs],
            "trade_id": [r.i for r in rs],
            "exchange": [r.x for r in rs],
            "conditions": [r.c for r in rs],
            "tape": [r.z for r in rs],
            "taker_side": pa.nulls(len(rs), pa.string()),
            "recv_ts": _recv(rs),
        },
    )


def _crypto_trades(rs: Sequence[m.CryptoTrade]) -> pa.Table:
    n = len(rs)
    return _build(
        TRADES,
        {
            "symbol": _symbols(rs),
            "ts": parse_timestamps([r.t for r in rs]),
            "price": [r.p for r in rs],
            "size": [r.s for r in rs],
            "trade_id": [r.i for r in rs],
            "exchange": pa.nulls(n, pa.string()),
            "conditions": pa.nulls(n, STRINGS),
            "tape": pa.nulls(n, pa.string()),
            "taker_side": [r.tks or None for r in rs],
            "recv_ts": _recv(rs),
        },
    )


def _occ_columns(rs: Sequence[m.OptionTrade] | Sequence[m.OptionQuote]) -> dict[str, list[Any]]:
    parsed = [parse_occ(r.S) for r in rs]
    return {
        "underlying": [p.underlying if p else None for p in parsed],
        "expiration": [p.expiration if p else None for p in parsed],
        "right": [p.right if p else None for p in parsed],
        "strike": [p.strike if p else None for p in parsed],
    }


def _option_trades(rs: Sequence[m.OptionTrade]) -> pa.Table:
    n = len(rs)
    return _build(
        OPTION_TRADES,
        {
            "symbol": _symbols(rs),
            "ts": parse_timestamps([r.t for r in rs]),
            "price": [r.p for r in rs],
            "size": [r.s for r in rs],
            "trade_id": pa.nulls(n, pa.int64()),
            "exchange": [r.x for r in rs],
            "conditions": [[r.c] if r.c else [] for r in rs],
            "tape": pa.nulls(n, pa.string()),
            "taker_side": pa.nulls(n, pa.string()),
            **_occ_columns(rs),
            "recv_ts": _recv(rs),
        },
    )


def _quote_columns(rs: Sequence[Any]) -> dict[str, Any]:
    return {
        "symbol": _symbols(rs),
        "ts": parse_timestamps([r.t for r in rs]),
        "bid_price": [r.bp for r in rs],
        "bid_size": [r.bs for r in rs],
        "ask_price": [r.ap for r in rs],
        "ask_size": [r.as_ for r in rs],
        "recv_ts": _recv(rs),
    }


def _stock_quotes(rs: Sequence[m.StockQuote]) -> pa.Table:
    return _build(
        QUOTES,
        {
            **_quote_columns(rs),
            "bid_exchange": [r.bx for r in rs],
            "ask_exchange": [r.ax for r in rs],
            "conditions": [r.c for r in rs],
            "tape": [r.z for r in rs],
        },
    )


def _crypto_quotes(rs: Sequence[m.CryptoQuote]) -> pa.Table:
    n = len(rs)
    return _build(
        QUOTES,
        {
            **_quote_columns(rs),
            "bid_exchange": pa.nulls(n, pa.string()),
            "ask_exchange": pa.nulls(n, pa.string()),
            "conditions": pa.nulls(n, STRINGS),
            "tape": pa.nulls(n, pa.string()),
        },
    )


def _option_quotes(rs: Sequence[m.OptionQuote]) -> pa.Table:
    return _build(
        OPTION_QUOTES,
        {
            **_quote_columns(rs),
            "bid_exchange": [r.bx for r in rs],
            "ask_exchange": [r.ax for r in rs],
            "conditions": [[r.c] if r.c else [] for r in rs],
            "tape": pa.nulls(len(rs), pa.string()),
            **_occ_columns(rs),
        },
    )


_BAR_KIND: Final = {m.MinuteBar: "minute", m.UpdatedBar: "updated", m.DailyBar: "daily"}


def _vendor_bars(rs: Sequence[m.MinuteBar]) -> pa.Table:
    return _build(
        VENDOR_BARS,
        {
            "symbol": _symbols(rs),
            "ts": parse_timestamps([r.t for r in rs]),
            "bar_kind": [_BAR_KIND[type(r)] for r in rs],
            "open": [r.o for r in rs],
            "high": [r.h for r in rs],
            "low": [r.l for r in rs],
            "close": [r.c for r in rs],
            "volume": [r.v for r in rs],
            "trade_count": [r.n for r in rs],
            "vwap": [r.vw for r in rs],
            "recv_ts": _recv(rs),
        },
    )


def _statuses(rs: Sequence[m.TradingStatus]) -> pa.Table:
    return _build(
        STATUSES,
        {
            "symbol": _symbols(rs),
            "ts": parse_timestamps([r.t for r in rs]),
            "status_code": [r.sc for r in rs],
            "status_message": [r.sm for r in rs],
            "reason_code": [r.rc for r in rs],
            "reason_message": [r.rm for r in rs],
            "tape": [r.z for r in rs],
            "recv_ts": _recv(rs),
        },
    )


def _lulds(rs: Sequence[m.Luld]) -> pa.Table:
    return _build(
        LULDS,
        {
            "symbol": _symbols(rs),
            "ts": parse_timestamps([r.t for r in rs]),
            "limit_up": [r.u for r in rs],
            "limit_down": [r.d for r in rs],
            "indicator": [r.i for r in rs],
            "tape": [r.z for r in rs],
            "recv_ts": _recv(rs),
        },
    )


def _corrections(rs: Sequence[m.Correction]) -> pa.Table:
    return _build(
        CORRECTIONS,
        {
            "symbol": _symbols(rs),
            "ts": parse_timestamps([r.t for r in rs]),
            "exchange": [r.x for r in rs],
            "orig_trade_id": [r.oi for r in rs],
            "orig_price": [r.op for r in rs],
            "orig_size": [r.os for r in rs],
            "orig_conditions": [r.oc for r in rs],
            "corr_trade_id": [r.ci for r in rs],
            "corr_price": [r.cp for r in rs],
            "corr_size": [r.cs for r in rs],
            "corr_conditions": [r.cc for r in rs],
            "tape": [r.z for r in rs],
            "recv_ts": _recv(rs),
        },
    )


def _cancels(rs: Sequence[m.CancelError]) -> pa.Table:
    return _build(
        CANCELS,
        {
            "symbol": _symbols(rs),
            "ts": parse_timestamps([r.t for r in rs]),
            "trade_id": [r.i for r in rs],
            "exchange": [r.x for r in rs],
            "price": [r.p for r in rs],
            "size": [r.s for r in rs],
            "action": [r.a for r in rs],
            "tape": [r.z for r in rs],
            "recv_ts": _recv(rs),
        },
    )


def _imbalances(rs: Sequence[m.Imbalance]) -> pa.Table:
    return _build(
        IMBALANCES,
        {
            "symbol": _symbols(rs),
            "ts": parse_timestamps([r.t for r in rs]),
            "price": [r.p for r in rs],
            "tape": [r.z for r in rs],
            "recv_ts": _recv(rs),
        },
    )


def _orderbooks(rs: Sequence[m.Orderbook]) -> pa.Table:
    return _build(
        ORDERBOOKS,
        {
            "symbol": _symbols(rs),
            "ts": parse_timestamps([r.t for r in rs]),
            "bids": [[{"price": lv.p, "size": lv.s} for lv in r.b] for r in rs],
            "asks": [[{"price": lv.p, "size": lv.s} for lv in r.a] for r in rs],
            "reset": [r.r for r in rs],
            "recv_ts": _recv(rs),
        },
    )


def _articles(rs: Sequence[m.NewsArticle]) -> pa.Table:
    return _build(
        ARTICLES,
        {
            "id": [r.id for r in rs],
            "headline": [r.headline for r in rs],
            "summary": [r.summary for r in rs],
            "author": [r.author for r in rs],
            "source": [r.source for r in rs],
            "url": [r.url for r in rs],
            "symbols": [r.symbols for r in rs],
            "created_at": parse_timestamps([r.created_at for r in rs]),
            "updated_at": parse_timestamps([r.updated_at for r in rs]),
            "content": [r.content for r in rs],
            "recv_ts": _recv(rs),
        },
    )


def _rows(schema: pa.Schema) -> Converter:
    """Rows given as dicts (pipeline output: bars and anomalies are rare, per bar or per flag)."""

    def convert(rows: Sequence[dict[str, Any]]) -> pa.Table:
        table = pa.Table.from_pylist(
            list(rows), schema=schema.set(0, pa.field("symbol", pa.string()))
        )
        return table.cast(schema)

    return convert


_SPECS: Final[dict[tuple[StreamName, str], TableSpec]] = {
    ("stocks", "trades"): TableSpec("trades", TRADES, _stock_trades),
    ("stocks", "quotes"): TableSpec("quotes", QUOTES, _stock_quotes),
    ("stocks", "vendor_bars"): TableSpec("vendor_bars", VENDOR_BARS, _vendor_bars),
    ("stocks", "statuses"): TableSpec("statuses", STATUSES, _statuses),
    ("stocks", "lulds"): TableSpec("lulds", LULDS, _lulds),
    ("stocks", "corrections"): TableSpec("corrections", CORRECTIONS, _corrections),
    ("stocks", "cancels"): TableSpec("cancels", CANCELS, _cancels),
    ("stocks", "imbalances"): TableSpec("imbalances", IMBALANCES, _imbalances),
    ("stocks", "anomalies"): TableSpec("anomalies", ANOMALIES, _rows(ANOMALIES)),
    ("crypto", "trades"): TableSpec("trades", TRADES, _crypto_trades),
    ("crypto", "quotes"): TableSpec("quotes", QUOTES, _crypto_quotes),
    ("crypto", "vendor_bars"): TableSpec("vendor_bars", VENDOR_BARS, _vendor_bars),
    ("crypto", "orderbooks"): TableSpec("orderbooks", ORDERBOOKS, _orderbooks),
    ("crypto", "anomalies"): TableSpec("anomalies", ANOMALIES, _rows(ANOMALIES)),
    ("options", "trades"): TableSpec("trades", OPTION_TRADES, _option_trades),
    ("options", "quotes"): TableSpec("quotes", OPTION_QUOTES, _option_quotes),
    ("options", "anomalies"): TableSpec("anomalies", ANOMALIES, _rows(ANOMALIES)),
    ("news", "articles"): TableSpec(
        "articles", ARTICLES, _articles, time_column="created_at", sort_by=("created_at", "id")
    ),
}

_TABLE_OF: Final[dict[tuple[StreamName, type], str]] = {
    ("stocks", m.StockTrade): "trades",
    ("stocks", m.StockQuote): "quotes",
    ("stocks", m.MinuteBar): "vendor_bars",
    ("stocks", m.UpdatedBar): "vendor_bars",
    ("stocks", m.DailyBar): "vendor_bars",
    ("stocks", m.TradingStatus): "statuses",
    ("stocks", m.Luld): "lulds",
    ("stocks", m.Correction): "corrections",
    ("stocks", m.CancelError): "cancels",
    ("stocks", m.Imbalance): "imbalances",
    ("crypto", m.CryptoTrade): "trades",
    ("crypto", m.CryptoQuote): "quotes",
    ("crypto", m.MinuteBar): "vendor_bars",
    ("crypto", m.UpdatedBar): "vendor_bars",
    ("crypto", m.DailyBar): "vendor_bars",
    ("crypto", m.Orderbook): "orderbooks",
    ("options", m.OptionTrade): "trades",
    ("options", m.OptionQuote): "quotes",
    ("news", m.NewsArticle): "articles",
}


def bars_spec(indicator_columns: Sequence[str]) -> TableSpec:
    """The `bars` table: our own bars with one float column per configured indicator."""
    schema = _schema(
        [
            ("bar_type", pa.string()),
            ("bar_size", pa.string()),
            ("open", pa.float64()),
            ("high", pa.float64()),
            ("low", pa.float64()),
            ("close", pa.float64()),
            ("volume", pa.float64()),
            ("trade_count", pa.int64()),
            ("vwap", pa.float64()),
            ("partial", pa.bool_()),
            *[(name, pa.float64()) for name in indicator_columns],
            ("session_vwap", pa.float64()),
            ("trend", pa.string()),
        ]
    )
    return TableSpec("bars", schema, _rows(schema))


def table_spec(stream: StreamName, table: str, indicator_columns: Sequence[str]) -> TableSpec:
    """The spec of one table of one stream; `bars` takes the configured indicator columns."""
    if table == "bars":
        return bars_spec(indicator_columns)
    return _SPECS[(stream, table)]


def table_for(stream: StreamName, record_type: type) -> str | None:
    """The table a record type of a stream lands in; `None` for control messages."""
    return _TABLE_OF.get((stream, record_type))


def tables_of(stream: StreamName) -> tuple[str, ...]:
    """Every table a stream can write."""
    own = tuple(table for (s, table) in _SPECS if s == stream)
    return (*own, "bars") if stream != "news" else own


# pyarrow imports pandas lazily on its first list conversion (0.5 s of file I/O); do it at import,
# before the event loop runs, instead of inside the first symbol task.
pa.array([0])
