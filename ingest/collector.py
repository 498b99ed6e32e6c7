"""The daemon's garbage-collector policy: young collections less often, full ones rarely.

With CPython's default thresholds (700, 10, 10) a full collection runs every few hundred thousand
allocations, and it visits every container the daemon holds: the lists of frames and messages in
flight, every symbol's state. Each one stops the event loop: 58-65 ms, twice in a 3 s run at 100k
trades/s over 200 symbols (the p99 frame latency), and 0.43 s, twenty times in a 28 s run at
20,000 symbols (a third of the run). The hot path makes few reference cycles (message structs
are not even tracked), so cyclic garbage can wait longer to be found; it is still collected.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["DAEMON_THRESHOLDS", "daemon_collector"]

DAEMON_THRESHOLDS: Final = (10_000, 20, 100)
"""A young collection every 10,000 net allocations, a middle one every 20 of those, a full one
after 100 middle ones at the soonest (~70 s at 100k trades/s, which allocate ~3 tracked objects a
trade)."""


@contextmanager
def daemon_collector() -> Iterator[None]:
    """The daemon's thresholds while it runs; the process's own again afterwards."""
    previous = gc.get_threshold()
    gc.set_threshold(*DAEMON_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
