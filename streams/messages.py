"""Alpaca market-data wire messages as msgspec structs, and the one decode path for frames.

A frame is a JSON array of messages (`T` tags the type), or for the options stream a MessagePack
array whose timestamps are MessagePack Timestamp extensions (type -1). Each stream type has its own
tagged union, because the same tag means different shapes per stream (a crypto trade has float
sizes and a taker side; an option trade has a single condition string). Decoding a whole frame
into structs is the fast path; only a frame that fails it is split into messages, so one bad
message is quarantined with its reason while the rest of the frame goes on.

Timestamps stay RFC 3339 strings here: the columnar stages parse them in bulk with nanosecond
precision (`storage.schemas.parse_timestamps`).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import msgspec

if TYPE_CHECKING:
    from ingest.config import StreamName

__all__ = [
    "CONTROL_TYPES",
    "MAX_VALUE",
    "REASONS",
    "AnyMessage",
    "CancelError",
    "ControlMessage",
    "Correction",
    "CryptoQuote",
    "CryptoTrade",
    "DailyBar",
    "DecodedFrame",
    "Error",
    "FrameDecoder",
    "Imbalance",
    "Luld",
    "MinuteBar",
    "NewsArticle",
    "OptionQuote",
    "OptionTrade",
    "Orderbook",
    "OrderbookLevel",
    "Reject",
    "StockQuote",
    "StockTrade",
    "Subscription",
    "Success",
    "TradingStatus",
    "UpdatedBar",
    "format_msgpack_timestamp",
]

MAX_VALUE: Final = 1e15
"""Largest price or size accepted: far above any real one, small enough that sums stay finite."""
NonNegative = Annotated[float, msgspec.Meta(ge=0, le=MAX_VALUE)]
"""A price or size: finite and in [0, 1e15] (NaN, infinities and negatives are refused)."""
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
"""An id or count that must fit the int64 columns it lands in."""
Symbol = Annotated[str, msgspec.Meta(min_length=1)]


class _Message(msgspec.Struct, tag_field="T", kw_only=True, gc=False):
    """Fields every message carries once the daemon has it: when it was received.

    `gc=False`: messages never form reference cycles, and hundreds of thousands of them wait in
    writer buffers; tracked by the cycle collector, every young collection would walk them all.
    """

    recv_ns: int = 0
    """Set by the receiving source, never read from the wire."""
    backfilled: bool = False
    """Recovered from REST history after a gap rather than received live (set by the back-fill,
    kept through the journal)."""


class _Market(_Message, kw_only=True):
    S: Symbol
    t: str


# --- stocks ------------------------------------------------------------------------------------


class StockTrade(_Market, tag="t", kw_only=True):
    """A stock trade."""

    i: Int64
    x: str
    p: NonNegative
    s: NonNegative
    c: tuple[str, ...] = ()
    z: str = ""


class StockQuote(_Market, tag="q", kw_only=True):
    """A stock NBBO quote."""

    bx: str = ""
    bp: NonNegative
    bs: NonNegative
    ax: str = ""
    ap: NonNegative
    as_: NonNegative = msgspec.field(name="as")
    c: tuple[str, ...] = ()
    z: str = ""


class MinuteBar(_Market, tag="b", kw_only=True):
    """A bar Alpaca computed (minute bar); `UpdatedBar` and `DailyBar` share the shape."""

    o: NonNegative
    h: NonNegative
    l: NonNegative  # noqa: E741 -- Alpaca's wire name
    c: NonNegative
    v: NonNegative
    n: Int64 = 0
    vw: NonNegative = 0.0


class UpdatedBar(MinuteBar, tag="u", kw_only=True):
    """A minute bar restated after a late trade."""


class DailyBar(MinuteBar, tag="d", kw_only=True):
    """A daily bar (stamped at midnight New York time)."""


class TradingStatus(_Market, tag="s", kw_only=True):
    """A trading status change (halt, resumption)."""

    sc: str
    sm: str = ""
    rc: str = ""
    rm: str = ""
    z: str = ""


class Luld(_Market, tag="l", kw_only=True):
    """Limit up / limit down price bands."""

    u: NonNegative
    d: NonNegative
    i: str = ""
    z: str = ""


class Correction(_Market, tag="c", kw_only=True):
    """A trade correction: the original and the corrected trade."""

    x: str
    oi: Int64
    op: NonNegative
    os: NonNegative
    oc: list[str] = []
    ci: Int64
    cp: NonNegative
    cs: NonNegative
    cc: list[str] = []
    z: str = ""
    applied: str = ""
    """What it did to the bars (`ingest.corrections`); set by the daemon, never on the wire."""


class CancelError(_Market, tag="x", kw_only=True):
    """A trade cancel (`a` = C) or error (`a` = E)."""

    i: Int64
    x: str
    p: NonNegative
    s: NonNegative
    a: str
    z: str = ""
    applied: str = ""
    """What it did to the bars (`ingest.corrections`); set by the daemon, never on the wire."""


class Imbalance(_Market, tag="i", kw_only=True):
    """An order imbalance (auction) message."""

    p: NonNegative
    z: str = ""


# --- crypto ------------------------------------------------------------------------------------


class CryptoTrade(_Market, tag="t", kw_only=True):
    """A crypto trade; `tks` is the taker side (B/S)."""

    i: Int64
    p: NonNegative
    s: NonNegative
    tks: str = ""


class CryptoQuote(_Market, tag="q", kw_only=True):
    """A crypto best bid/offer."""

    bp: NonNegative
    bs: NonNegative
    ap: NonNegative
    as_: NonNegative = msgspec.field(name="as")


class OrderbookLevel(msgspec.Struct, frozen=True, gc=False):
    """One price level; size 0 removes the level."""

    p: NonNegative
    s: NonNegative


class Orderbook(_Market, tag="o", kw_only=True):
    """An order book update, or a full snapshot when `r` is true."""

    b: list[OrderbookLevel] = []
    a: list[OrderbookLevel] = []
    r: bool = False


# --- options -----------------------------------------------------------------------------------


class OptionTrade(_Market, tag="t", kw_only=True):
    """An option trade; `c` is a single condition string."""

    p: NonNegative
    s: NonNegative
    x: str = ""
    c: str = ""


class OptionQuote(_Market, tag="q", kw_only=True):
    """An option quote."""

    bx: str = ""
    bp: NonNegative
    bs: NonNegative
    ax: str = ""
    ap: NonNegative
    as_: NonNegative = msgspec.field(name="as")
    c: str = ""


# --- news --------------------------------------------------------------------------------------


class NewsArticle(_Message, tag="n", kw_only=True):
    """A news article; routed by its `symbols`."""

    id: Int64
    headline: str = ""
    summary: str = ""
    author: str = ""
    created_at: str
    updated_at: str
    url: str = ""
    content: str = ""
    symbols: list[str] = []
    source: str = ""


# --- control -----------------------------------------------------------------------------------


class Success(_Message, tag="success", kw_only=True):
    """`connected` or `authenticated`."""

    msg: str


class Error(_Message, tag="error", kw_only=True):
    """An error with Alpaca's numeric code."""

    code: int
    msg: str = ""


class Subscription(_Message, tag="subscription", kw_only=True):
    """The complete current subscription, sent after every change."""

    trades: list[str] = []
    quotes: list[str] = []
    bars: list[str] = []
    updatedBars: list[str] = []
    dailyBars: list[str] = []
    statuses: list[str] = []
    lulds: list[str] = []
    corrections: list[str] = []
    cancelErrors: list[str] = []
    orderbooks: list[str] = []
    news: list[str] = []


ControlMessage = Success | Error | Subscription
CONTROL_TYPES: Final = (Success, Error, Subscription)

StockMessage = (
    StockTrade
    | StockQuote
    | MinuteBar
    | UpdatedBar
    | DailyBar
    | TradingStatus
    | Luld
    | Correction
    | CancelError
    | Imbalance
)
CryptoMessage = CryptoTrade | CryptoQuote | MinuteBar | UpdatedBar | DailyBar | Orderbook
OptionMessage = OptionTrade | OptionQuote
AnyMessage = StockMessage | CryptoMessage | OptionMessage | NewsArticle | ControlMessage

_UNIONS: Final[dict[StreamName, object]] = {
    "stocks": StockMessage | ControlMessage,
    "crypto": CryptoMessage | ControlMessage,
    "options": OptionMessage | ControlMessage,
    "news": NewsArticle | ControlMessage,
}


REASONS: Final = (
    "oversized_frame",
    "malformed_frame",
    "missing_type",
    "unknown_type",
    "missing_field",
    "wrong_type",
    "bad_value",
    "bad_timestamp",
    "absurd_timestamp",
    "invalid_message",
)
"""Every reason a frame or message is quarantined for (the `reason` label of the metric)."""


@dataclass(frozen=True, slots=True)
class Reject:
    """A message (or a whole frame) the decoder refused, kept for quarantine."""

    raw: bytes
    reason: str
    """A short, stable reason class, one of `REASONS`."""
    detail: str


@dataclass(slots=True)
class DecodedFrame:
    """The messages of one frame that decoded, and the ones that did not."""

    messages: list[AnyMessage] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


Encoding = Literal["json", "msgpack"]

_TIMESTAMP_EXT: Final = -1
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")
_U32_I64: Final = struct.Struct(">Iq")
_YEAR_1: Final = -62_135_596_800
_YEAR_10000: Final = 253_402_300_800


def format_msgpack_timestamp(ext: msgspec.msgpack.Ext) -> str:
    """RFC 3339 with nanoseconds (`2024-03-11T13:35:35.133122560Z`) from a Timestamp extension.

    Raises:
        ValueError: `ext` is not a MessagePack Timestamp (type -1 with 4, 8 or 12 bytes).
    """
    data: bytes = ext.data  # type: ignore[assignment]  # bytes when decoded
    if ext.code != _TIMESTAMP_EXT:
        msg = f"extension type {ext.code} is not a timestamp"
        raise ValueError(msg)
    if len(data) == 4:
        seconds, nanos = _U32.unpack(data)[0], 0
    elif len(data) == 8:
        value = _U64.unpack(data)[0]
        seconds, nanos = value & 0x3_FFFF_FFFF, value >> 34
    elif len(data) == 12:
        nanos, seconds = _U32_I64.unpack(data)
    else:
        msg = f"timestamp extension of {len(data)} bytes"
        raise ValueError(msg)
    if nanos > 999_999_999:
        msg = f"timestamp nanoseconds {nanos} out of range"
        raise ValueError(msg)
    if not _YEAR_1 <= seconds < _YEAR_10000:
        msg = f"timestamp seconds {seconds} out of range"
        raise ValueError(msg)
    prefix = _PREFIXES.get(seconds)
    if prefix is None:  # once per second of data: a feed's stamps share their seconds
        if len(_PREFIXES) >= _PREFIX_CACHE:
            _PREFIXES.clear()
        prefix = _PREFIXES[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds))
    return prefix + str(nanos + 1_000_000_000)[1:] + "Z"  # nine digits, quicker than :09d


_PREFIXES: dict[int, str] = {}
"""Seconds since the epoch: their RFC 3339 text up to the point (strftime is the dear part)."""
_PREFIX_CACHE: Final = 4096
_STAMP_FIELDS: Final = ("t", "created_at", "updated_at")


def _wire_twin(cls: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """A subclass of `cls` whose timestamp fields decode MessagePack Timestamp extensions."""
    stamps = [
        (name, msgspec.msgpack.Ext) for name in cls.__struct_fields__ if name in _STAMP_FIELDS
    ]
    if not stamps:
        return cls
    tag = cls.__struct_config__.tag
    return msgspec.defstruct(f"_Wire{cls.__name__}", stamps, bases=(cls,), tag=tag, kw_only=True)


def _union_members(union: object) -> tuple[type[msgspec.Struct], ...]:
    return tuple(union.__args__)  # type: ignore[attr-defined]


class _Converter:
    """Turns a MessagePack twin struct into the JSON struct every consumer sees, in place.

    The twin only retypes the timestamp fields of its target, so both have the same fields in the
    same slots: once its stamps are formatted as text, the twin object simply becomes an instance
    of the target (`__class__` assignment). No second struct is built, which made this three
    times as fast as constructing the target from the twin's fields.
    """

    __slots__ = ("_stamps", "_target")

    def __init__(self, target: type[msgspec.Struct], twin: type[msgspec.Struct]) -> None:
        if twin.__struct_fields__ != target.__struct_fields__ or twin.__base__ is not target:
            msg = f"{twin.__name__} is not a same-layout twin of {target.__name__}"
            raise TypeError(msg)
        self._target = target
        self._stamps = tuple(f for f in target.__struct_fields__ if f in _STAMP_FIELDS)

    def __call__(self, wire: Any) -> None:
        """Format the stamps of `wire` and make it a target instance."""
        for name in self._stamps:
            setattr(wire, name, format_msgpack_timestamp(getattr(wire, name)))
        wire.__class__ = self._target


class FrameDecoder:
    """Decodes one stream type's frames; whole frame first, message by message on failure.

    `encoding="json"` (every stream) decodes straight into the structs. `encoding="msgpack"` (the
    options stream) decodes into twin structs whose timestamps are MessagePack extensions, then
    converts each to the same struct, with the timestamp as an RFC 3339 nanosecond string.
    """

    def __init__(
        self, stream: StreamName, encoding: Encoding = "json", *, max_bytes: int | None = None
    ) -> None:
        union = _UNIONS[stream]
        self.stream = stream
        self.encoding = encoding
        self.max_bytes = max_bytes
        """Frames longer than this are refused whole (`oversized_frame`); None: no cap."""
        self._probe_json = msgspec.json.Decoder(dict[str, object])
        self._converters: dict[type, _Converter] = {}
        if encoding == "json":
            self._frame: Any = msgspec.json.Decoder(list[union])  # type: ignore[valid-type]
            self._one: Any = msgspec.json.Decoder(union)
            self._raw: Any = msgspec.json.Decoder(list[msgspec.Raw])
            return
        twins: list[type[msgspec.Struct]] = []
        for member in _union_members(union):
            twin = _wire_twin(member)
            twins.append(twin)
            if twin is not member:
                self._converters[twin] = _Converter(member, twin)
        wire_union = twins[0]
        for twin in twins[1:]:
            wire_union = wire_union | twin  # type: ignore[assignment]
        self._frame = msgspec.msgpack.Decoder(list[wire_union])  # type: ignore[valid-type]
        self._one = msgspec.msgpack.Decoder(wire_union)
        self._raw = msgspec.msgpack.Decoder(list[msgspec.Raw])

    def decode(self, frame: bytes, recv_ns: int) -> DecodedFrame:
        """Decode a frame and stamp every message with `recv_ns`."""
        if self.max_bytes is not None and len(frame) > self.max_bytes:
            detail = f"frame of {len(frame)} bytes exceeds the cap of {self.max_bytes}"
            return DecodedFrame(rejects=[Reject(bytes(frame), "oversized_frame", detail)])
        try:
            messages: list[AnyMessage] = self._frame.decode(frame)
        except (msgspec.DecodeError, ValueError):
            return self._decode_each(frame, recv_ns)
        if self._converters:
            try:
                return DecodedFrame(self._convert_all(messages, recv_ns))
            except ValueError:
                return self._decode_each(frame, recv_ns)
        for message in messages:
            message.recv_ns = recv_ns
        return DecodedFrame(messages)

    def _convert_all(self, messages: list[Any], recv_ns: int) -> list[AnyMessage]:
        """The twins among `messages` become their targets, in place; all get `recv_ns`."""
        converters = self._converters
        for message in messages:
            convert = converters.get(type(message))
            if convert is not None:
                convert(message)
            message.recv_ns = recv_ns
        return messages

    def _decode_each(self, frame: bytes, recv_ns: int) -> DecodedFrame:
        out = DecodedFrame()
        try:
            parts = self._raw.decode(frame)
        except (msgspec.DecodeError, ValueError) as exc:
            out.rejects.append(Reject(bytes(frame), "malformed_frame", str(exc)))
            return out
        if not isinstance(parts, list):  # pragma: no cover -- the decoder's type is a list
            parts = []
        for part in parts:
            raw = bytes(part)
            try:
                message: AnyMessage = self._one.decode(raw)
                if self._converters:
                    message = self._convert_all([message], recv_ns)[0]
            except (msgspec.DecodeError, ValueError) as exc:
                out.rejects.append(Reject(raw, self._reason(raw, exc), str(exc)))
                continue
            message.recv_ns = recv_ns
            out.messages.append(message)
        return out

    def _reason(self, raw: bytes, exc: Exception) -> str:
        text = str(exc)
        if "missing required field `T`" in text:
            return "missing_type"
        if "`$.T`" in text:
            try:
                if self.encoding == "json":
                    tag = self._probe_json.decode(raw).get("T")
                else:
                    tag = msgspec.msgpack.decode(raw, type=dict[str, object]).get("T")
            except (msgspec.DecodeError, ValueError):  # ValueError: bad UTF-8 in a skipped key
                return "invalid_message"
            return "missing_type" if tag is None else "unknown_type"
        return _field_reason(text)


def _field_reason(text: str) -> str:
    """The reason class of a msgspec validation message about one field."""
    if "missing required field" in text:
        return "missing_field"
    if "timestamp" in text:
        return "bad_timestamp"
    if "out of range" in text or ">=" in text or "<=" in text or "length >=" in text:
        return "bad_value"
    if text.startswith("Expected `") and ", got `" in text:
        return "wrong_type" if "- at `$." in text else "invalid_message"
    return "invalid_message"
