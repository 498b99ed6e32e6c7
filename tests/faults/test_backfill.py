"""Gap back-fill behaviours beyond the matrix: order, limits, failures, the gate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

from streams.alpaca.backfill import Gate
from streams.base import Frame
from tests.alpaca.fake_alpaca import Drop, FakeAlpaca, Publish, Send, Session
from tests.faults.content import Content
from tests.faults.harness import PATHS, daemon_settings, run_scenario
from tests.faults.test_matrix import assert_exactly_once, backfilled_rows, expected_rows

if TYPE_CHECKING:
    from pathlib import Path

Message = dict[str, Any]


def run(settings: Any, script: Any, expected: Any, **kw: Any) -> Any:
    return anyio.run(lambda: run_scenario(settings, script, expected, **kw))


class TestGapEdges:
    def test_out_of_order_rows_before_the_drop_are_not_written_twice(self, tmp_path: Path) -> None:
        """Rows held after the gap's start are recognised by key when REST sends them again.

        The gap starts at a frame's last row, which here is not the frame's newest.
        """
        content = Content()
        a, b, c = content.stocks(12, kinds=1), content.stocks(6, kinds=1), content.stocks(6)
        a[-1]["t"], a[-3]["t"] = a[-3]["t"], a[-1]["t"]  # the last row is older than two before

        def script(fake: FakeAlpaca) -> None:
            fake.script(
                PATHS["stocks"],
                Session(steps=[Send([a]), Publish(b), Drop()]),
                Session(steps=[Send([c])]),
            )

        outcome = run(
            daemon_settings(tmp_path, ("stocks",)), script, expected_rows("stocks", a + b + c)
        )
        assert_exactly_once(tmp_path, "stocks", a + b + c)
        assert backfilled_rows(outcome, "stocks") == len(b)

    def test_a_gap_longer_than_the_limit_is_truncated(self, tmp_path: Path) -> None:
        """Rows older than `backfill_max_gap` before the reconnect are not fetched (and logged)."""
        old = Content(start_ns=None)
        a, b = old.stocks(6, kinds=1), old.stocks(6, kinds=1)
        c = Content().stocks(6, kinds=1)

        def script(fake: FakeAlpaca) -> None:
            fake.script(
                PATHS["stocks"],
                Session(steps=[Send([a]), Publish(b), Drop()]),
                Session(steps=[Send([c])]),
            )

        outcome = run(
            daemon_settings(tmp_path, ("stocks",)),
            script,
            expected_rows("stocks", a + c),
            alpaca={"backfill_max_gap": 60.0},
        )
        assert outcome.events("backfill_gap_truncated")
        assert backfilled_rows(outcome, "stocks") == 0
        assert_exactly_once(tmp_path, "stocks", a + c)

    def test_rest_down_gives_up_the_gap_but_not_the_stream(self, tmp_path: Path) -> None:
        """REST keeps failing: the gap is counted as failed, the live data still flows."""
        a, b, c = (Content().stocks(6, kinds=1) for _ in range(3))

        def script(fake: FakeAlpaca) -> None:
            fake.history.failures = 1000
            fake.script(
                PATHS["stocks"],
                Session(steps=[Send([a]), Publish(b), Drop()]),
                Session(steps=[Send([c])]),
            )

        outcome = run(
            daemon_settings(tmp_path, ("stocks",)), script, expected_rows("stocks", a + c)
        )
        assert outcome.metrics.backfill_failures.get("stocks") == 1
        assert outcome.events("backfill_failed")
        assert_exactly_once(tmp_path, "stocks", a + c)


class FrameLog:
    def __init__(self) -> None:
        self.seen: list[int] = []

    async def __call__(self, frame: Frame) -> None:
        self.seen.append(frame.recv_ns)


def frame(n: int) -> Frame:
    return Frame("stocks", n, [])


class TestGate:
    @pytest.mark.anyio
    async def test_holds_until_released_then_passes_through(self) -> None:
        """Frames wait until `release`, are then delivered in order, later ones at once."""
        sink = FrameLog()
        gate = Gate(sink, limit=10)
        for n in range(3):
            await gate.deliver(frame(n))
        assert sink.seen == []
        await gate.release()
        await gate.deliver(frame(3))
        assert sink.seen == [0, 1, 2, 3]
        assert [f.recv_ns for f in gate.recorded] == [0, 1, 2, 3]

    @pytest.mark.anyio
    async def test_overflow_lets_everything_through_in_order(self) -> None:
        """Past its limit the gate delivers what it held, then the new frame; nothing is lost."""
        sink = FrameLog()
        gate = Gate(sink, limit=3)
        for n in range(5):
            await gate.deliver(frame(n))
        assert sink.seen == [0, 1, 2, 3, 4]
        assert len(gate.recorded) == 3
        assert gate.overflowed
