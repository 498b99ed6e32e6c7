"""The timestamp screen: unusable stamps are moved to the frame's rejects, the rest goes on."""

from __future__ import annotations

import msgspec
import pytest

from ingest.screen import MAX_AHEAD_NS, screen_frame
from streams.base import Frame
from streams.messages import FrameDecoder, NewsArticle, StockTrade

RECV = 1_720_000_000 * 1_000_000_000  # 2024-07-03


def trade(stamp: str, i: int = 1) -> dict[str, object]:
    return {"T": "t", "S": "AAPL", "i": i, "x": "V", "p": 1.0, "s": 1.0, "t": stamp}


def frame_of(*messages: dict[str, object], stream: str = "stocks") -> Frame:
    decoded = FrameDecoder(stream).decode(msgspec.json.encode(list(messages)), RECV)  # type: ignore[arg-type]
    assert not decoded.rejects
    return Frame(stream, RECV, decoded.messages)  # type: ignore[arg-type]


class TestScreen:
    def test_good_frame_passes_untouched(self) -> None:
        """A frame whose stamps are all fine comes back with every message and no reject."""
        frame = frame_of(trade("2024-07-03T09:30:00.123456789Z"), trade("2024-07-02T10:00:00Z"))
        screened = screen_frame(frame)
        assert len(screened.messages) == 2
        assert screened.rejects == []

    @pytest.mark.parametrize(
        ("stamp", "reason"),
        [
            pytest.param("yesterday", "bad_timestamp", id="not-a-time"),
            pytest.param("x2024-07-01T00:00:00Z", "bad_timestamp", id="letters"),
            pytest.param("2300-01-01T00:00:00Z", "bad_timestamp", id="beyond-ns-range"),
            pytest.param("1970-01-01T00:00:00Z", "absurd_timestamp", id="epoch"),
            pytest.param("2099-07-05T00:00:00Z", "absurd_timestamp", id="decades-ahead"),
        ],
    )
    def test_unusable_stamp_is_rejected_the_rest_kept(self, stamp: str, reason: str) -> None:
        """One bad stamp rejects its message only, with the reason and the message as JSON."""
        frame = screen_frame(frame_of(trade("2024-07-03T09:30:00Z", 1), trade(stamp, 2)))
        assert [m.i for m in frame.messages if isinstance(m, StockTrade)] == [1]
        (reject,) = frame.rejects
        assert reject.reason == reason
        assert msgspec.json.decode(reject.raw)["t"] == stamp

    def test_a_little_ahead_of_the_receive_time_is_fine(self) -> None:
        """Clock skew up to a day ahead of the receive time is accepted."""
        assert MAX_AHEAD_NS == 86_400 * 10**9
        # RECV is 2024-07-03T09:46:40Z: 23 h ahead passes.
        assert screen_frame(frame_of(trade("2024-07-04T08:46:40Z"))).rejects == []

    def test_news_checks_both_stamps(self) -> None:
        """An article with a bad `updated_at` is rejected even when `created_at` is fine."""
        good = {
            "T": "n",
            "id": 1,
            "created_at": "2024-07-01T00:00:00Z",
            "updated_at": "2024-07-01T00:00:00Z",
        }
        bad = {**good, "id": 2, "updated_at": "soon"}
        frame = screen_frame(frame_of(good, bad, stream="news"))
        assert [m.id for m in frame.messages if isinstance(m, NewsArticle)] == [1]
        assert [r.reason for r in frame.rejects] == ["bad_timestamp"]


def option_trade(stamp: int | str, size: float) -> dict[str, object]:
    if isinstance(stamp, int):  # as MessagePack carries it: the 12-byte Timestamp form
        seconds, nanos = divmod(stamp, 10**9)
        stamp_ext = msgspec.msgpack.Ext(-1, nanos.to_bytes(4, "big") + seconds.to_bytes(8, "big"))
        return {"T": "t", "S": "SPY240719C00400000", "p": 1.0, "s": size, "t": stamp_ext}
    return {"T": "t", "S": "SPY240719C00400000", "p": 1.0, "s": size, "t": stamp}


def msgpack_frame_of(*messages: dict[str, object]) -> Frame:
    raw = msgspec.msgpack.encode(list(messages))
    decoded = FrameDecoder("options", "msgpack").decode(raw, RECV)
    assert not decoded.rejects
    return Frame("options", RECV, decoded.messages, [], raw, "msgpack")


class TestNanosecondStamps:
    """MessagePack stamps arrive as nanoseconds; the screen judges them as it does text."""

    def test_good_frame_passes_untouched(self) -> None:
        frame = screen_frame(msgpack_frame_of(option_trade(RECV - 10**9, 1), option_trade(RECV, 2)))
        assert [m.t for m in frame.messages] == [RECV - 10**9, RECV]  # type: ignore[union-attr]
        assert frame.rejects == []

    @pytest.mark.parametrize(
        "stamp",
        [
            pytest.param(0, id="epoch"),
            pytest.param(4_090_000_000 * 10**9, id="decades-ahead"),
            pytest.param(2**62 * 10**9, id="past-any-calendar"),
        ],
    )
    def test_absurd_stamp_is_rejected_the_rest_kept(self, stamp: int) -> None:
        """Out of range: that message only is refused, its detail naming the time as text."""
        frame = screen_frame(msgpack_frame_of(option_trade(RECV, 1), option_trade(stamp, 2)))
        assert [m.s for m in frame.messages] == [1]  # type: ignore[union-attr]
        (reject,) = frame.rejects
        assert reject.reason == "absurd_timestamp"
        assert msgspec.json.decode(reject.raw)["s"] == 2
        if stamp == 0:
            assert "1970-01-01T00:00:00.000000000Z" in reject.detail

    def test_text_and_nanoseconds_in_one_frame_are_judged_one_by_one(self) -> None:
        """A frame mixing the two kinds (text from a JSON peer) is still screened exactly."""
        frame = msgpack_frame_of(
            option_trade(RECV, 1), option_trade("2024-07-03T09:00:00Z", 2), option_trade("x", 3)
        )
        screened = screen_frame(frame)
        assert [m.s for m in screened.messages] == [1, 2]  # type: ignore[union-attr]
        assert [r.reason for r in screened.rejects] == ["bad_timestamp"]
