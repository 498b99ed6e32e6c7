"""The timestamp screen: a decoded frame's timestamps are checked before anything relies on them.

The decoder keeps timestamps as RFC 3339 strings (the columnar stages parse them in bulk), so a
message with an unparseable or absurd timestamp would decode fine and then break the Parquet
conversion of a whole buffer, or a bar series, much later. The screen parses a frame's
timestamps once, in bulk, and moves every message whose time cannot be parsed, lies before
1990, or lies more than a day after it was received to the frame's rejects, where the router
quarantines it like any other bad input. The common case (every stamp fine) costs one list
comprehension, one Arrow cast and one numpy comparison per frame.
"""

from __future__ import annotations

import calendar
from typing import TYPE_CHECKING, Final

import msgspec
import pyarrow as pa

from storage.schemas import TIMESTAMP
from streams.messages import NewsArticle, Reject

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from streams.base import Frame
    from streams.messages import AnyMessage

__all__ = ["EARLIEST_NS", "MAX_AHEAD_NS", "screen_frame"]

EARLIEST_NS: Final = calendar.timegm((1990, 1, 1, 0, 0, 0)) * 1_000_000_000
"""No market data this daemon ingests is older than 1990; an earlier stamp is a bad value."""
MAX_AHEAD_NS: Final = 86_400 * 1_000_000_000
"""How far past its receive time a message may be stamped (clock skew, time zones gone wrong)."""

_encode = msgspec.json.Encoder().encode


def screen_frame(frame: Frame) -> Frame:
    """`frame`, with messages whose timestamps are unusable moved to its rejects."""
    messages = frame.messages
    if not messages:
        return frame
    try:
        stamps = [m.t for m in messages]  # type: ignore[union-attr]
        per_message = 1
    except AttributeError:
        stamps, per_message = _stamps_of(messages)
    ns = _parse(stamps)
    latest = frame.recv_ns + MAX_AHEAD_NS
    if ns is not None and not ((ns < EARLIEST_NS) | (ns > latest)).any():
        return frame
    bad = _bad_messages(stamps, ns, per_message, latest)
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


def _stamps_of(messages: list[AnyMessage]) -> tuple[list[str], int]:
    """Every message's stamps, a fixed number per message (news: created and updated)."""
    if all(isinstance(m, NewsArticle) for m in messages):
        stamps: list[str] = []
        for article in messages:
            assert isinstance(article, NewsArticle)
            stamps += (article.created_at, article.updated_at)
        return stamps, 2
    # Control messages (no time) mixed into data: give them a stamp that always passes.
    return [getattr(m, "t", None) or _ALWAYS_FINE for m in messages], 1


_ALWAYS_FINE: Final = "2000-01-01T00:00:00Z"


def _parse(stamps: list[str]) -> npt.NDArray[np.int64] | None:
    try:
        parsed = pa.array(stamps, pa.string()).cast(TIMESTAMP)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return None
    return parsed.cast(pa.int64()).to_numpy(zero_copy_only=False)


def _bad_messages(
    stamps: list[str], ns: npt.NDArray[np.int64] | None, per_message: int, latest: int
) -> dict[int, str]:
    """Message index -> reason, for every message with at least one unusable stamp."""
    bad: dict[int, str] = {}
    for position, stamp in enumerate(stamps):
        if ns is not None:
            value: int | None = int(ns[position])
        else:
            one = _parse([stamp])
            value = None if one is None else int(one[0])
        index = position // per_message
        if value is None:
            bad[index] = "bad_timestamp"
        elif not EARLIEST_NS <= value <= latest:
            bad.setdefault(index, "absurd_timestamp")
    return bad


def _stamp_text(message: AnyMessage) -> str:
    if isinstance(message, NewsArticle):
        return f"{message.created_at} / {message.updated_at}"
    return str(getattr(message, "t", ""))


# pyarrow's first string-to-timestamp cast loads its time zone database; do it at import.
pa.array([_ALWAYS_FINE]).cast(TIMESTAMP)
