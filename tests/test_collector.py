"""The daemon's garbage-collector thresholds hold while it runs, and only then."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

import anyio

from ingest.app import run_daemon
from ingest.collector import DAEMON_THRESHOLDS
from streams.sim import SimSource

if TYPE_CHECKING:
    from ingest.config import Settings
    from ingest.state import DaemonState


def test_the_daemon_sets_its_thresholds_and_gives_them_back(settings: Settings) -> None:
    """Ready with the daemon's thresholds; the process's own again once it has stopped."""
    before = (700, 10, 10)
    gc.set_threshold(*before)
    seen: list[tuple[int, int, int]] = []

    def on_ready(_: DaemonState) -> None:
        seen.append(gc.get_threshold())

    async def main() -> None:
        source = SimSource(settings, ("stocks",))
        await run_daemon(settings, source, duration=0.3, on_ready=on_ready)

    try:
        anyio.run(main)
        assert seen == [DAEMON_THRESHOLDS]
        assert gc.get_threshold() == before
    finally:
        gc.set_threshold(*before)
