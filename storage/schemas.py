"""Every table's Arrow schema and its conversion from records, in one place.

A `TableSpec` says how a table looks on disk (schema, the time column that picks the date
partition, the sort order) and how a buffer of records becomes an Arrow table. Conversion runs once
per sealed file over the whole buffer, column by column, so per-record work is one attribute read
per field. Schema evolution rules are in `docs/schema.md`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pyarrow as pa

from streams import messages as m
from streams.occ import parse_occ

if TYPE_CHECKING:
    from ingest.config import StreamName

__all__ = [
    "TIMESTAMP",
    "MarketConverter",
    "TableSpec",
    "bars_spec",
    "describe_tables",
    "parse_timestamps",
    "stamp_ns",
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
    """How one table is laid out and built, and what identifies one of its rows."""

    name: str
    schema: pa.Schema
    to_table: Converter
    time_column: str = "ts"
    sort_by: tuple[str, ...] = ("symbol", "ts")
    keys: tuple[str, ...] = ("symbol", "ts")
    """Columns whose values identify a row: two rows with equal keys are one fact, stored once."""
    watermark_column: str = "ts"
    """The time column de-duplication compares against the dataset's newest row."""
    versions: tuple[str, str] | None = None
    """(identity, version) columns when a row can be restated: compaction keeps the newest."""


def parse_timestamps(values: Sequence[m.Stamp]) -> pa.Array[Any]:
    """Stamps to `timestamp[ns, UTC]`, in bulk.

    Text is RFC 3339 with any number of fractional digits; integers are nanoseconds (MessagePack).
    A list holds one kind but for a flush that merges a MessagePack stream with its JSON
    back-fill; such a list is parsed per kind.

    Raises:
        pyarrow.ArrowInvalid: a text stamp does not parse, or an integer is out of range.
    """
    if not values or isinstance(values[0], str):
        try:
            return pa.array(values, pa.string()).cast(TIMESTAMP)
        except pa.ArrowTypeError:
            return _parse_mixed(values)
    try:
        return pa.array(values, TIMESTAMP)
    except OverflowError as exc:
        msg = f"timestamp out of range: {exc}"
        raise pa.ArrowInvalid(msg) from exc
    except pa.ArrowTypeError:
        return _parse_mixed(values)


def stamp_ns(stamp: m.Stamp) -> int | None:
    """One stamp in nanoseconds since the epoch, or None when its text does not parse."""
    if isinstance(stamp, int):
        return stamp
    try:
        value = parse_timestamps([stamp]).cast(pa.int64())[0].as_py()
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    return value if isinstance(value, int) else None


def _parse_mixed(values: Sequence[m.Stamp]) -> pa.Array[Any]:
    texts = [i for i, v in enumerate(values) if isinstance(v, str)]
    try:
        out = np.array([0 if isinstance(v, str) else v for v in values], np.int64)
    except OverflowError as exc:
        msg = f"timestamp out of range: {exc}"
        raise pa.ArrowInvalid(msg) from exc
    if texts:
        parsed = pa.array([values[i] for i in texts], pa.string()).cast(TIMESTAMP)
        out[texts] = parsed.cast(pa.int64()).to_numpy()
    return pa.array(out, TIMESTAMP)


def _build(schema: pa.Schema, columns: dict[str, Any]) -> pa.Table:
    arrays = []
    for f in schema:
        value = columns[f.name]
        if isinstance(value, pa.Array):
            arrays.append(value)
        elif f.type == TIMESTAMP and _nanoseconds(value):
            # Integer nanoseconds as they are: pa.array(value, TIMESTAMP) costs 5 us a column.
            arrays.append(pa.Array.from_buffers(TIMESTAMP, len(value), [None, pa.py_buffer(value)]))
        else:
            arrays.append(pa.array(value, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _nanoseconds(value: Any) -> bool:
    """Whether `value` is a contiguous numpy array of int64 (a flush's times, gathered)."""
    return isinstance(value, np.ndarray) and value.dtype == np.int64 and value.flags.c_contiguous


# --- schemas -----------------------------------------------------------------------------------

_OCC_FIELDS: Final[list[tuple[str, pa.DataType]]] = [
    ("underlying", pa.string()),
    ("expiration", pa.date32()),
    ("right", pa.string()),
    ("strike", pa.float64()),
]


def _schema(
    fields: list[tuple[str, pa.DataType]], added: list[tuple[str, pa.DataType]] | None = None
) -> pa.Schema:
    """symbol, ts, `fields`, recv_ts, then `added`: columns added later go at the end."""
    head = [("symbol", SYMBOL), ("ts", TIMESTAMP)]
    return pa.schema([*head, *fields, ("recv_ts", TIMESTAMP), *(added or [])])


_BACKFILLED: Final[list[tuple[str, pa.DataType]]] = [("backfilled", pa.bool_())]
"""True for a row recovered from REST history after a gap (issue 6), false when received live."""
_APPLIED: Final[list[tuple[str, pa.DataType]]] = [("applied", pa.string())]
"""What a correction or cancel did to the bars (`ingest.corrections`)."""


TRADES: Final = _schema(
    [
        ("price", pa.float64()),
        ("size", pa.float64()),
        ("trade_id", pa.int64()),
        ("exchange", pa.string()),
        ("conditions", STRINGS),
        ("tape", pa.string()),
        ("taker_side", pa.string()),
    ],
    _BACKFILLED,
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
    ],
    _BACKFILLED,
)
OPTION_TRADES: Final = pa.schema(
    [*TRADES][:-2]
    + [pa.field(n, t) for n, t in _OCC_FIELDS]
    + [TRADES.field("recv_ts"), TRADES.field("backfilled")]
)
OPTION_QUOTES: Final = pa.schema(
    [*QUOTES][:-2]
    + [pa.field(n, t) for n, t in _OCC_FIELDS]
    + [QUOTES.field("recv_ts"), QUOTES.field("backfilled")]
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
    ],
    _BACKFILLED,
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
    ],
    _APPLIED,
)
CANCELS: Final = _schema(
    [
        ("trade_id", pa.int64()),
        ("exchange", pa.string()),
        ("price", pa.float64()),
        ("size", pa.float64()),
        ("action", pa.string()),
        ("tape", pa.string()),
    ],
    _APPLIED,
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
    *_BACKFILLED,
]
ARTICLES: Final = pa.schema(_ARTICLE_FIELDS)


# --- converters --------------------------------------------------------------------------------

Column = str | Callable[[Sequence[Any]], Any] | None
"""Where a column comes from: a record attribute, a function of all records, or nulls."""


class MarketConverter:
    """Builds a table of records with `S` and `t`: symbol, ts and recv_ts plus `columns`.

    A schema with a `backfilled` column takes it from the records' `backfilled` flag. Called with
    `known` columns (the router's bulk build per flush: the symbols from its grouping, trades'
    times, prices and sizes it already parsed), it gathers only the rest from the records.
    """

    __slots__ = ("_attributes", "_columns", "_schema")

    def __init__(self, schema: pa.Schema, columns: dict[str, Column]) -> None:
        if "backfilled" in schema.names:
            columns = {**columns, "backfilled": "backfilled"}
        self._schema = schema
        self._columns = columns
        self._attributes = {
            name: attrgetter(source) for name, source in columns.items() if isinstance(source, str)
        }

    def __call__(self, rs: Sequence[Any]) -> pa.Table:
        """The table of `rs`, every column gathered from the records."""
        return self.with_columns(rs, {})

    def with_columns(self, rs: Sequence[Any], known: Mapping[str, Any]) -> pa.Table:
        """The table of `rs`, taking the columns in `known` as given (arrays of len(rs))."""
        built: dict[str, Any] = dict(known)
        if "symbol" not in built:
            built["symbol"] = pa.array(list(map(_SYMBOL, rs)), pa.string()).dictionary_encode()
        if "ts" not in built:
            built["ts"] = parse_timestamps(list(map(_TIME, rs)))
        if "recv_ts" not in built:
            built["recv_ts"] = np.fromiter(map(_RECV, rs), np.int64, len(rs))
        for name, source in self._columns.items():
            if name in built:
                continue
            if source is None:
                built[name] = pa.nulls(len(rs), self._schema.field(name).type)
            elif isinstance(source, str):
                built[name] = list(map(self._attributes[name], rs))
            else:
                built[name] = source(rs)
        return _build(self._schema, built)


_SYMBOL: Final = attrgetter("S")
_TIME: Final = attrgetter("t")
_RECV: Final = attrgetter("recv_ns")


def _applied(rs: Sequence[Any]) -> list[str | None]:
    """What a correction or cancel did to the bars (`ingest.corrections`); null if not judged."""
    return [r.applied or None for r in rs]


def _one_condition(rs: Sequence[Any]) -> list[list[str]]:
    """Options carry a single condition string; the table keeps the list type of stocks."""
    return [[r.c] if r.c else [] for r in rs]


def _occ(part: str) -> Callable[[Sequence[Any]], list[Any]]:
    def column(rs: Sequence[Any]) -> list[Any]:
        return [getattr(p, part) if (p := parse_occ(r.S)) else None for r in rs]

    return column


_OCC: Final[dict[str, Column]] = {name: _occ(name) for name, _ in _OCC_FIELDS}
_BAR_KIND: Final = {m.MinuteBar: "minute", m.UpdatedBar: "updated", m.DailyBar: "daily"}
_QUOTE: Final[dict[str, Column]] = {
    "bid_price": "bp",
    "bid_size": "bs",
    "ask_price": "ap",
    "ask_size": "as_",
}

_stock_trades = MarketConverter(
    TRADES,
    {
        "price": "p",
        "size": "s",
        "trade_id": "i",
        "exchange": "x",
        "conditions": "c",
        "tape": "z",
        "taker_side": None,
    },
)
_crypto_trades = MarketConverter(
    TRADES,
    {
        "price": "p",
        "size": "s",
        "trade_id": "i",
        "exchange": None,
        "conditions": None,
        "tape": None,
        "taker_side": lambda rs: [r.tks or None for r in rs],
    },
)
_option_trades = MarketConverter(
    OPTION_TRADES,
    {
        "price": "p",
        "size": "s",
        "trade_id": None,
        "exchange": "x",
        "conditions": _one_condition,
        "tape": None,
        "taker_side": None,
        **_OCC,
    },
)
_stock_quotes = MarketConverter(
    QUOTES,
    {**_QUOTE, "bid_exchange": "bx", "ask_exchange": "ax", "conditions": "c", "tape": "z"},
)
_crypto_quotes = MarketConverter(
    QUOTES,
    {**_QUOTE, "bid_exchange": None, "ask_exchange": None, "conditions": None, "tape": None},
)
_option_quotes = MarketConverter(
    OPTION_QUOTES,
    {
        **_QUOTE,
        "bid_exchange": "bx",
        "ask_exchange": "ax",
        "conditions": _one_condition,
        "tape": None,
        **_OCC,
    },
)
_vendor_bars = MarketConverter(
    VENDOR_BARS,
    {
        "bar_kind": lambda rs: [_BAR_KIND[type(r)] for r in rs],
        "open": "o",
        "high": "h",
        "low": "l",
        "close": "c",
        "volume": "v",
        "trade_count": "n",
        "vwap": "vw",
    },
)
_statuses = MarketConverter(
    STATUSES,
    {
        "status_code": "sc",
        "status_message": "sm",
        "reason_code": "rc",
        "reason_message": "rm",
        "tape": "z",
    },
)
_lulds = MarketConverter(LULDS, {"limit_up": "u", "limit_down": "d", "indicator": "i", "tape": "z"})
_corrections = MarketConverter(
    CORRECTIONS,
    {
        "exchange": "x",
        "orig_trade_id": "oi",
        "orig_price": "op",
        "orig_size": "os",
        "orig_conditions": "oc",
        "corr_trade_id": "ci",
        "corr_price": "cp",
        "corr_size": "cs",
        "corr_conditions": "cc",
        "tape": "z",
        "applied": _applied,
    },
)
_cancels = MarketConverter(
    CANCELS,
    {
        "trade_id": "i",
        "exchange": "x",
        "price": "p",
        "size": "s",
        "action": "a",
        "tape": "z",
        "applied": _applied,
    },
)
_imbalances = MarketConverter(IMBALANCES, {"price": "p", "tape": "z"})


def _levels(side: str) -> Callable[[Sequence[Any]], list[Any]]:
    def column(rs: Sequence[Any]) -> list[Any]:
        return [[{"price": lv.p, "size": lv.s} for lv in getattr(r, side)] for r in rs]

    return column


_orderbooks = MarketConverter(
    ORDERBOOKS, {"bids": _levels("b"), "asks": _levels("a"), "reset": "r"}
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
            "backfilled": [r.backfilled for r in rs],
            "recv_ts": pa.array([r.recv_ns for r in rs], TIMESTAMP),
        },
    )


def _rows(schema: pa.Schema) -> Converter:
    """Rows given as dicts (pipeline output: bars and anomalies are rare, per bar or per flag)."""
    plain = schema.set(0, pa.field("symbol", pa.string()))

    def convert(rows: Sequence[dict[str, Any]]) -> pa.Table:
        # Only the symbol column changes type: casting the whole table costs a call a column.
        table = pa.Table.from_pylist(list(rows), schema=plain)
        return table.set_column(0, schema.field(0), table.column(0).dictionary_encode())

    return convert


# De-duplication keys (docs/schema.md): what makes a row the same fact when it arrives twice.
_TRADE_KEYS: Final = ("symbol", "ts", "exchange", "trade_id")
_OPTION_TRADE_KEYS: Final = ("symbol", "ts", "exchange", "price", "size")
_QUOTE_KEYS: Final = (
    "symbol",
    "ts",
    "bid_price",
    "bid_size",
    "ask_price",
    "ask_size",
    "bid_exchange",
    "ask_exchange",
)
_VENDOR_BAR_KEYS: Final = ("symbol", "bar_kind", "ts", "trade_count", "volume")
_ANOMALY_KEYS: Final = ("symbol", "ts", "price")
BAR_KEYS: Final = ("symbol", "bar_type", "bar_size", "ts", "partial")


def _anomalies() -> TableSpec:
    return TableSpec("anomalies", ANOMALIES, _rows(ANOMALIES), keys=_ANOMALY_KEYS)


_SPECS: Final[dict[tuple[StreamName, str], TableSpec]] = {
    ("stocks", "trades"): TableSpec("trades", TRADES, _stock_trades, keys=_TRADE_KEYS),
    ("stocks", "quotes"): TableSpec("quotes", QUOTES, _stock_quotes, keys=_QUOTE_KEYS),
    ("stocks", "vendor_bars"): TableSpec(
        "vendor_bars", VENDOR_BARS, _vendor_bars, keys=_VENDOR_BAR_KEYS
    ),
    ("stocks", "statuses"): TableSpec(
        "statuses", STATUSES, _statuses, keys=("symbol", "ts", "status_code", "reason_code")
    ),
    ("stocks", "lulds"): TableSpec(
        "lulds", LULDS, _lulds, keys=("symbol", "ts", "limit_up", "limit_down", "indicator")
    ),
    ("stocks", "corrections"): TableSpec(
        "corrections",
        CORRECTIONS,
        _corrections,
        keys=("symbol", "ts", "orig_trade_id", "corr_trade_id"),
    ),
    ("stocks", "cancels"): TableSpec(
        "cancels", CANCELS, _cancels, keys=("symbol", "ts", "trade_id", "action")
    ),
    ("stocks", "imbalances"): TableSpec(
        "imbalances", IMBALANCES, _imbalances, keys=("symbol", "ts", "price")
    ),
    ("stocks", "anomalies"): _anomalies(),
    ("crypto", "trades"): TableSpec("trades", TRADES, _crypto_trades, keys=_TRADE_KEYS),
    ("crypto", "quotes"): TableSpec("quotes", QUOTES, _crypto_quotes, keys=_QUOTE_KEYS),
    ("crypto", "vendor_bars"): TableSpec(
        "vendor_bars", VENDOR_BARS, _vendor_bars, keys=_VENDOR_BAR_KEYS
    ),
    ("crypto", "orderbooks"): TableSpec(
        "orderbooks", ORDERBOOKS, _orderbooks, keys=("symbol", "ts", "reset")
    ),
    ("crypto", "anomalies"): _anomalies(),
    ("options", "trades"): TableSpec(
        "trades", OPTION_TRADES, _option_trades, keys=_OPTION_TRADE_KEYS
    ),
    ("options", "quotes"): TableSpec("quotes", OPTION_QUOTES, _option_quotes, keys=_QUOTE_KEYS),
    ("options", "anomalies"): _anomalies(),
    ("news", "articles"): TableSpec(
        "articles",
        ARTICLES,
        _articles,
        time_column="created_at",
        sort_by=("created_at", "id"),
        keys=("id", "updated_at"),
        watermark_column="updated_at",
        versions=("id", "updated_at"),
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
        ],
        [("corrections", pa.int32())],  # trade corrections applied while the bar was open
    )
    return TableSpec("bars", schema, _rows(schema), keys=BAR_KEYS)


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


def describe_tables(indicator_columns: Sequence[str]) -> str:
    """Every table as Markdown (columns, types, keys): the generated part of docs/schema.md."""
    groups: dict[tuple[str, str, tuple[str, ...]], list[str]] = {}
    specs: dict[tuple[str, str, tuple[str, ...]], TableSpec] = {}
    for stream in ("stocks", "crypto", "options", "news"):
        for table in tables_of(stream):
            spec = table_spec(stream, table, indicator_columns)
            key = (table, spec.schema.to_string(show_schema_metadata=False), spec.keys)
            groups.setdefault(key, []).append(stream)
            specs[key] = spec
    out: list[str] = []
    for key, streams in groups.items():
        spec = specs[key]
        out += [
            f"### {', '.join(f'{s}/{spec.name}' for s in streams)}",
            "",
            f"Keys: `{', '.join(spec.keys)}`. Partitioned by the UTC date of `{spec.time_column}`,"
            f" sorted by `{', '.join(spec.sort_by)}`.",
            "",
            "| column | type |",
            "|---|---|",
            *(f"| `{f.name}` | `{f.type}` |" for f in spec.schema),
            "",
        ]
    return "\n".join(out)


# pyarrow imports pandas lazily on its first list conversion (0.5 s of file I/O); do it at import,
# before the event loop runs, instead of inside the first symbol task.
pa.array([0])


if __name__ == "__main__":  # pragma: no cover -- `python -m storage.schemas` regenerates the docs
    from ingest.config import PipelineSettings
    from ingest.pipeline import indicator_columns

    print(describe_tables(indicator_columns(PipelineSettings())))
