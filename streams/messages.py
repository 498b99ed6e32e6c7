"""Alpaca market-data wire messages as msgspec structs, and the one decode path for frames.

A frame is a JSON array of messages (`T` tags the type), or for the options stream a MessagePack
array whose timestamps are MessagePack Timestamp extensions (type -1). Each stream type has its own
tagged union, because the same tag means different shapes per stream (a crypto trade has float
sizes and a taker side; an option trade has a single condition string). Decoding a whole frame
into structs is the fast path; only a frame that fails it is split into messages, so one bad
message is quarantined with its reason while the rest of the frame goes on.

Timestamps are `Stamp`s: JSON's RFC 3339 strings stay text (the columnar stages parse them in bulk
with nanosecond precision, `storage.schemas.parse_timestamps`), MessagePack's Timestamp extensions
become integer nanoseconds, which needs no text at all.
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
    "Stamp",
    "StockQuote",
    "StockTrade",
    "Subscription",
    "Success",
    "TradingStatus",
    "UpdatedBar",
    "format_stamp",
    "msgpack_timestamp_ns",
]

MAX_VALUE: Final = 1e15
"""Largest price or size accepted: far above any real one, small enough that sums stay finite."""
NonNegative = Annotated[float, msgspec.Meta(ge=0, le=MAX_VALUE)]
"""A price or size: finite and in [0, 1e15] (NaN, infinities and negatives are refused)."""
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
"""An id or count that must fit the int64 columns it lands in."""
Symbol = Annotated[str, msgspec.Meta(min_length=1)]
Stamp = str | int
"""An event time: RFC 3339 text as JSON carries it, or nanoseconds since the epoch (UTC) as a
MessagePack Timestamp extension does. Consumers turn either into `timestamp[ns]` in bulk."""
if TYPE_CHECKING:
    _WireStamp = Stamp
else:
    _WireStamp = Stamp | msgspec.msgpack.Ext
    """What a stamp field decodes: also a MessagePack Timestamp extension, which `FrameDecoder`
    turns into nanoseconds before it returns, so no one else ever sees one."""


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
    t: _WireStamp


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
    created_at: _WireStamp
    updated_at: _WireStamp
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


def msgpack_timestamp_ns(ext: msgspec.msgpack.Ext) -> int:
    """Nanoseconds since the epoch from a MessagePack Timestamp extension.

    Whether the time is plausible is the screen's to judge (`ingest.screen`), not the decoder's.

    Raises:
        ValueError: `ext` is not a Timestamp (type -1 with 4, 8 or 12 bytes).
    """
    data: bytes = ext.data  # type: ignore[assignment]  # bytes when decoded
    if ext.code != _TIMESTAMP_EXT:
        msg = f"extension type {ext.code} is not a timestamp"
        raise ValueError(msg)
    if len(data) == 8:  # what encoders write for any time between 1970 and 2514
        value = _U64.unpack(data)[0]
        seconds, nanos = value & _SECONDS_34, value >> 34
    elif len(data) == 4:
        seconds, nanos = _U32.unpack(data)[0], 0
    elif len(data) == 12:
        nanos, seconds = _U32_I64.unpack(data)
    else:
        msg = f"timestamp extension of {len(data)} bytes"
        raise ValueError(msg)
    if nanos > 999_999_999:
        msg = f"timestamp nanoseconds {nanos} out of range"
        raise ValueError(msg)
    ns: int = seconds * 1_000_000_000 + nanos
    return ns


def format_stamp(stamp: Stamp) -> str:
    """`stamp` as RFC 3339 text, for people (quarantine details); text stays as it came."""
    if isinstance(stamp, str):
        return stamp
    seconds, nanos = divmod(stamp, 1_000_000_000)
    try:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    except (OverflowError, OSError, ValueError):  # beyond what the C library can render
        return f"{stamp} ns since the epoch"
    return f"{prefix}.{nanos:09d}Z"


_SECONDS_34: Final = (1 << 34) - 1
_NANOS_BOUND: Final = 1_000_000_000 << 34
"""An 8-byte stamp below this has nanoseconds under a billion."""
_STAMP_FIELDS: Final = ("t", "created_at", "updated_at")


class _NotCommon(Exception):
    """A message the common case does not cover; the general path takes it."""


def _stamp_common(messages: list[Any], recv_ns: int) -> bool:
    """Stamp a frame of market messages whose stamps are all 8-byte Timestamp extensions.

    The common case, inlined: a call per message would cost a third of the decode, and so would
    checking each stamp's form before unpacking it. Returns False at the first message it does
    not cover (no `t`, another form), with the messages before it done and those after it not.
    """
    unpack, bound, code, seconds = _U64.unpack, _NANOS_BOUND, _TIMESTAMP_EXT, _SECONDS_34
    try:
        for message in messages:
            ext = message.t  # AttributeError: no `t`; `.data`: not an extension
            value = unpack(ext.data)[0]  # struct.error: not 8 bytes
            if value >= bound or ext.code != code:
                raise _NotCommon
            message.t = (value & seconds) * 1_000_000_000 + (value >> 34)
            message.recv_ns = recv_ns
    except (_NotCommon, AttributeError, struct.error):
        return False
    return True


def _stamp_each(messages: list[Any], recv_ns: int) -> None:
    """Stamp any messages: every Timestamp extension among their stamps becomes nanoseconds."""
    ext_type = msgspec.msgpack.Ext
    for message in messages:
        for name in _STAMP_FIELDS:
            value = getattr(message, name, None)
            if type(value) is ext_type:
                setattr(message, name, msgpack_timestamp_ns(value))
        message.recv_ns = recv_ns


class FrameDecoder:
    """Decodes one stream type's frames; whole frame first, message by message on failure.

    `encoding="json"` (every stream) decodes straight into the structs. `encoding="msgpack"` (the
    options stream) decodes into the same structs, whose stamp fields also take a MessagePack
    Timestamp extension; `decode` turns each into integer nanoseconds since the epoch.
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
        codec: Any = msgspec.json if encoding == "json" else msgspec.msgpack
        self._frame: Any = codec.Decoder(list[union])  # type: ignore[valid-type]
        self._one: Any = codec.Decoder(union)
        self._raw: Any = codec.Decoder(list[msgspec.Raw])

    def decode(self, frame: bytes, recv_ns: int) -> DecodedFrame:
        """Decode a frame and stamp every message with `recv_ns`."""
        if self.max_bytes is not None and len(frame) > self.max_bytes:
            detail = f"frame of {len(frame)} bytes exceeds the cap of {self.max_bytes}"
            return DecodedFrame(rejects=[Reject(bytes(frame), "oversized_frame", detail)])
        try:
            messages: list[AnyMessage] = self._frame.decode(frame)
        except (msgspec.DecodeError, ValueError):
            return self._decode_each(frame, recv_ns)
        if self.encoding == "msgpack":
            if not _stamp_common(messages, recv_ns):
                try:
                    _stamp_each(messages, recv_ns)
                except ValueError:
                    return self._decode_each(frame, recv_ns)
            return DecodedFrame(messages)
        for message in messages:
            message.recv_ns = recv_ns
        return DecodedFrame(messages)

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
                _stamp_each([message], recv_ns)
            except (msgspec.DecodeError, ValueError) as exc:
                out.rejects.append(Reject(raw, self._reason(raw, exc), str(exc)))
                continue
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
