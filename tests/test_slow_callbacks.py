"""The loop-callback probe times every step of a paced run, and unpatches the loop."""

from __future__ import annotations

import asyncio.events

from benchmarks.slow_callbacks import record


def test_every_callback_is_timed_with_what_it_resumed_and_the_loop_is_left_as_it_was() -> None:
    run = asyncio.events.Handle._run
    callbacks = record(rate=20_000.0, ticks=2_000, symbols=5, config=None, over_ms=0.0)
    assert asyncio.events.Handle._run is run
    assert callbacks
    assert all(c.wall_ms >= 0 and c.cpu_ms >= 0 for c in callbacks)
    assert [c.at for c in callbacks] == sorted(c.at for c in callbacks)
    # The router's flusher is among the tasks stepped, named by the coroutines it waits in.
    assert any(c.resumed.startswith("StreamRouter.run>") for c in callbacks)
