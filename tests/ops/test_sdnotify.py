"""sd_notify against a real AF_UNIX datagram socket, path and abstract."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import anyio
import pytest
from structlog.testing import capture_logs

from ingest.sdnotify import Notifier, run_watchdog
from tests.ops.notify_listener import NotifyListener

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.anyio

WATCHDOG_USEC = 100_000
"""100 ms: pings every 50 ms, so a few periods fit in a fast test."""
PERIOD = WATCHDOG_USEC / 2 / 1_000_000


@pytest.fixture(params=[pytest.param("path", id="path"), pytest.param("abstract", id="abstract")])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifyListener]:
    directory = tmp_path if request.param == "path" else None
    with NotifyListener(directory, watchdog_usec=WATCHDOG_USEC) as listener:
        yield listener


class TestNotifier:
    async def test_sends_each_message_as_one_datagram(self, listener: NotifyListener) -> None:
        """ready, status, watchdog and stopping each arrive as their own KEY=value datagram."""
        with Notifier.from_env(listener.env) as notifier:
            notifier.ready()
            notifier.status("streaming 4 streams")
            notifier.watchdog()
            notifier.stopping()
        with anyio.fail_after(5):
            got = [dict(await listener.receive()) for _ in range(4)]
        assert got == [
            {"READY": "1"},
            {"STATUS": "streaming 4 streams"},
            {"WATCHDOG": "1"},
            {"STOPPING": "1"},
        ]

    def test_is_a_noop_without_notify_socket(self) -> None:
        """Outside systemd every call does nothing and nothing fails."""
        notifier = Notifier.from_env({"WATCHDOG_USEC": "1000000"})
        assert not notifier.enabled
        assert notifier.watchdog_interval is None
        notifier.ready()
        notifier.watchdog()
        notifier.stopping()

    async def test_flattens_status_to_one_line(self, listener: NotifyListener) -> None:
        """A multi-line status cannot inject other fields such as READY=1."""
        with Notifier.from_env(listener.env) as notifier:
            notifier.status("two\nREADY=1 lines")
        with anyio.fail_after(5):
            assert dict(await listener.receive()) == {"STATUS": "two READY=1 lines"}

    def test_logs_a_send_failure_once(self, tmp_path: Path) -> None:
        """With nobody listening the first failure is logged, later ones are silent."""
        missing = str(tmp_path / "missing.sock")
        with Notifier.from_env({"NOTIFY_SOCKET": missing}) as notifier, capture_logs() as logs:
            notifier.ready()
            notifier.watchdog()
        assert [entry["event"] for entry in logs] == ["sd_notify_failed"]

    def test_ignores_a_watchdog_meant_for_another_pid(self) -> None:
        """WATCHDOG_PID naming another process (an inherited environment) disables pings."""
        env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
        assert Notifier.from_env(env).watchdog_interval is None
        env["WATCHDOG_PID"] = str(os.getpid())
        assert Notifier.from_env(env).watchdog_interval == 1.0


class TestRunWatchdog:
    async def test_speaks_the_whole_lifecycle(self, listener: NotifyListener) -> None:
        """READY, STATUS, repeated WATCHDOG at half the interval, then STOPPING."""
        with Notifier.from_env(listener.env) as notifier, anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                await tg.start(run_watchdog, notifier, lambda: True)
                notifier.ready()
                notifier.status("ready")
                await listener.wait_for("READY", "1")
                await listener.wait_for("STATUS", "ready")
                await listener.wait_for("WATCHDOG", "1")
                tg.cancel_scope.cancel()
            notifier.stopping()
            await listener.wait_for("STOPPING", "1")
        keys = [next(iter(m)) for m in listener.received]
        assert keys[0] == "WATCHDOG"  # tg.start returns after the first ping
        assert keys[-1] == "STOPPING"
        assert {"READY", "STATUS"} <= set(keys)

    async def test_pings_at_half_the_interval(self, listener: NotifyListener) -> None:
        """Over a window of ten periods there are about ten pings: never more than fit."""
        with Notifier.from_env(listener.env) as notifier, anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                await tg.start(run_watchdog, notifier, lambda: True)
                listener.drain_nowait()
                start = time.monotonic()
                await anyio.sleep(PERIOD * 10)  # time must pass to count the pings
                pings = len(listener.drain_nowait())
                elapsed = time.monotonic() - start
                tg.cancel_scope.cancel()
        # Deadlines are a period apart, so at most elapsed/period (+1 for the edge) fit.
        assert 2 <= pings <= elapsed / PERIOD + 1

    async def test_withholds_pings_while_unhealthy(self, listener: NotifyListener) -> None:
        """No ping is sent while health() is false; pings resume when it is true again."""
        healthy = True
        with (
            Notifier.from_env(listener.env) as notifier,
            anyio.fail_after(10),
            capture_logs() as logs,
        ):
            async with anyio.create_task_group() as tg:
                await tg.start(run_watchdog, notifier, lambda: healthy)
                await listener.wait_for("WATCHDOG")
                healthy = False
                listener.drain_nowait()
                await anyio.sleep(PERIOD * 5)  # time must pass to show that nothing arrives
                assert listener.drain_nowait() == []
                healthy = True
                await listener.wait_for("WATCHDOG")
                tg.cancel_scope.cancel()
        events = [entry["event"] for entry in logs]
        assert events.count("watchdog_withheld") == 1
        assert events.count("watchdog_resumed") == 1

    async def test_wedged_loop_sends_no_pings(self, listener: NotifyListener) -> None:
        """Pings come from the event loop, so a loop that never yields stops them."""
        with Notifier.from_env(listener.env) as notifier, anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(run_watchdog, notifier, lambda: True)
                await listener.wait_for("WATCHDOG")
                listener.drain_nowait()
                until = time.monotonic() + PERIOD * 4
                while time.monotonic() < until:  # busy, never yields: a wedged loop
                    pass
                assert listener.drain_nowait() == []
                await listener.wait_for("WATCHDOG")
                tg.cancel_scope.cancel()

    async def test_returns_at_once_without_a_watchdog(self, listener: NotifyListener) -> None:
        """Without WATCHDOG_USEC the task reports started and ends, sending nothing."""
        env = {"NOTIFY_SOCKET": listener.address}
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                with Notifier.from_env(env) as notifier:
                    await tg.start(run_watchdog, notifier, lambda: True)
        assert listener.drain_nowait() == []
