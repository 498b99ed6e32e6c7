"""The timestamp screen: a frame's timestamps are range-checked before anything relies on them.

The decoder keeps JSON's timestamps as RFC 3339 strings (the columnar stages parse them in bulk)
and MessagePack's as integer nanoseconds. A stamp from before 1990 or more than a day after the
frame was received (or now, for a recovered frame) is absurd: it would open a bar decades away or
a date partition nobody queries. Canonical RFC 3339 UTC strings sort like the times they name, as
nanoseconds do, so the common case costs a `min` and a `max` over the frame's stamps -- an Arrow
parse per frame would cost ~12 µs of fixed overhead, more than a small frame's decode.

Only a frame that fails that comparison is parsed here, stamp by stamp, to tell `bad_timestamp`
(unparseable) from `absurd_timestamp`; the offending messages move to the frame's rejects, where
the router quarantines them. A stamp that is in range as text but still unparseable (a month 13)
is caught where it is parsed in bulk: the router leaves such trades out of the pipeline
(`parseable_timestamps`) and the table writer quarantines the record at seal time.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final, cast

import msgspec
import numpy as np
import pyarrow as pa

from storage.schemas import TIMESTAMP, stamp_ns
from streams.messages import NewsArticle, Reject, format_stamp

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    import numpy.typing as npt

    from ingest.config import StreamName
    from ingest.metrics import Metrics
    from storage.quarantine import Quarantine
    from storage.refusals import Refused
    from streams.base import Frame
    from streams.messages import AnyMessage, Stamp

__all__ = [
    "EARLIEST",
    "MAX_AHEAD_NS",
    "parseable_timestamps",
    "quarantine_refused",
    "refused_reject",
    "screen_frame",
]

EARLIEST: Final = "1990-01-01T00:00:00Z"
"""No market data this daemon ingests is older than 1990; an earlier stamp is absurd."""
_EARLIEST_NS: Final = 631_152_000 * 1_000_000_000
MAX_AHEAD_NS: Final = 86_400 * 1_000_000_000
"""How far past its receive time a message may be stamped (clock skew, time zones gone wrong)."""

_encode = msgspec.json.Encoder().encode


class _Latest:
    """The latest acceptable stamp as text, recomputed once per second of receive time."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def __call__(self, recv_ns: int) -> str:
        second = (recv_ns + MAX_AHEAD_NS) // 1_000_000_000
        if second != self.second:
            self.second = second
            # "...:SSZ" sorts after every fraction of that second ("...:SS.123Z").
            self.text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        return self.text


_latest = _Latest()


def screen_frame(frame: Frame) -> Frame:
    """`frame`, with messages whose timestamps are unparseable or absurd moved to its rejects."""
    messages = frame.messages
    if not messages:
        return frame
    try:
        stamps = [m.t for m in messages]  # type: ignore[union-attr]
        per_message = 1
    except AttributeError:
        stamps, per_message = _stamps_of(messages)
    # The later of receive time and now: a recovered or replayed frame keeps its receive time.
    received = max(frame.recv_ns, time.time_ns())
    if _all_in_range(stamps, received):
        return frame
    bad = _bad_messages(stamps, per_message, received + MAX_AHEAD_NS)
    if not bad:
        return frame  # in range after all (an offset such as +05:00 compares differently)
    kept: list[AnyMessage] = []
    rejects = list(frame.rejects)
    for index, message in enumerate(messages):
        reason = bad.get(index)
        if reason is None:
            kept.append(message)
        else:
            detail = f"timestamp {_stamp_text(message)!r} is unusable ({reason})"
            rejects.append(Reject(_encode(message), reason, detail))
    frame.messages = kept
    frame.rejects = rejects
    return frame


def parseable_timestamps(stamps: Sequence[Stamp]) -> npt.NDArray[np.bool_]:
    """Which stamps Arrow can parse (the slow path after a bulk parse failed)."""
    return np.array([stamp_ns(s) is not None for s in stamps], dtype=bool)


def quarantine_refused(
    quarantine: Quarantine, metrics: Metrics
) -> Callable[[StreamName, str, Refused], Awaitable[None]]:
    """The writers' `on_refused`: count and quarantine every record a table refused."""

    async def refused(stream: StreamName, table: str, records: Refused) -> None:
        rejects = [refused_reject(record, detail) for record, detail in records]
        for reject in rejects:
            metrics.quarantined.inc(stream, reject.reason)
        await quarantine.put(stream, time.time_ns(), rejects)

    return refused


def refused_reject(record: object, detail: str) -> Reject:
    """The quarantine entry of a record a table writer could not convert."""
    stamps = [getattr(record, name, None) for name in ("t", "created_at", "updated_at")]
    texts = [s for s in stamps if isinstance(s, str)]
    reason = "bad_timestamp" if any(stamp_ns(s) is None for s in texts) else "invalid_message"
    try:
        raw = _encode(record)
    except (TypeError, ValueError):
        raw = repr(record).encode()
    return Reject(raw, reason, detail)


def _all_in_range(stamps: list[Stamp], received: int) -> bool:
    """The quick check, over a frame's stamps: all text or all nanoseconds, and all in range."""
    try:
        if isinstance(stamps[0], str):
            texts = cast("list[str]", stamps)
            return EARLIEST <= min(texts) and max(texts) <= _latest(received)
        nanos = cast("list[int]", stamps)
        return _EARLIEST_NS <= min(nanos) and max(nanos) <= received + MAX_AHEAD_NS
    except TypeError:  # text and nanoseconds in one frame: judged one by one
        return False


def _stamps_of(messages: list[AnyMessage]) -> tuple[list[Stamp], int]:
    """Every message's stamps, a fixed number per message (news: created and updated)."""
    if all(isinstance(m, NewsArticle) for m in messages):
        stamps: list[Stamp] = []
        for article in messages:
            assert isinstance(article, NewsArticle)
            stamps += (article.created_at, article.updated_at)
        return stamps, 2
    # Control messages (no time) mixed into data: give them a stamp that always passes.
    return [getattr(m, "t", None) or _ALWAYS_FINE for m in messages], 1


_ALWAYS_FINE: Final = "2000-01-01T00:00:00Z"


def _bad_messages(stamps: list[Stamp], per_message: int, latest_ns: int) -> dict[int, str]:
    """Message index -> reason, for every message with at least one unusable stamp."""
    bad: dict[int, str] = {}
    for position, stamp in enumerate(stamps):
        value = stamp_ns(stamp)
        index = position // per_message
        if value is None:
            bad[index] = "bad_timestamp"
        elif not _EARLIEST_NS <= value <= latest_ns:
            bad.setdefault(index, "absurd_timestamp")
    return bad


def _stamp_text(message: AnyMessage) -> str:
    if isinstance(message, NewsArticle):
        return f"{format_stamp(message.created_at)} / {format_stamp(message.updated_at)}"
    return format_stamp(getattr(message, "t", ""))


# pyarrow's first string-to-timestamp cast loads its time zone database; do it at import.
pa.array([_ALWAYS_FINE]).cast(TIMESTAMP)
