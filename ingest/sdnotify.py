"""sd_notify spoken directly: readiness, status, watchdog pings and stopping for systemd.

The protocol is one datagram of `KEY=value` lines sent to the AF_UNIX socket named by
`NOTIFY_SOCKET` (a path, or an abstract name starting with `@`). We speak it ourselves instead of
depending on libsystemd bindings: it is a dozen lines and it keeps the daemon installable anywhere.

Sending must never stall ingestion, so the socket is non-blocking and every error (no listener, a
full receive queue) is logged once and otherwise ignored: systemd's own watchdog is what notices
a daemon that has really gone quiet.

The watchdog ping is sent by `run_watchdog`, a task in the daemon's root task group. Because it
runs on the event loop, a wedged loop sends nothing; because it asks `health()` before every ping,
a stream that the daemon reports unhealthy also withholds the pings. Either way systemd restarts
the service after `WatchdogSec=`.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Self

import anyio
import structlog

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from anyio.abc import TaskStatus

__all__ = ["Notifier", "run_watchdog"]

_log = structlog.get_logger(__name__)


def _socket_address(value: str) -> str | bytes:
    """Translate `NOTIFY_SOCKET` into an address `sendto` accepts.

    An abstract socket is written `@name` by systemd and starts with a NUL byte on the wire.
    """
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def _watchdog_seconds(environ: Mapping[str, str]) -> float | None:
    """The watchdog interval systemd asked for, or None when it is off or meant for another PID.

    `WATCHDOG_PID` is set when the variables may have been inherited by a child; only the named
    process may ping.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000


class Notifier:
    """Sends sd_notify messages when `NOTIFY_SOCKET` is set; every method is a no-op otherwise.

    Create it once at start-up, `with Notifier.from_env() as notifier:`, so the socket is closed
    on exit. Methods are
    synchronous and never block: they may be called from any point of the event loop.

    Attributes:
        watchdog_interval: Seconds between the deadlines systemd enforces (`WATCHDOG_USEC`), or
            None when the service has no watchdog.
    """

    def __init__(self, notify_socket: str | None, *, watchdog_interval: float | None = None):
        self._address = _socket_address(notify_socket) if notify_socket else None
        self._socket: socket.socket | None = None
        self._failed = False
        self.watchdog_interval = watchdog_interval if self._address is not None else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier configured from the environment systemd gave the process.

        Args:
            environ: The environment to read; `os.environ` by default (tests pass their own).
        """
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_interval=_watchdog_seconds(env))

    @property
    def enabled(self) -> bool:
        """True when messages go somewhere (the process runs under a notify-type unit)."""
        return self._address is not None

    def ready(self) -> None:
        """Tell systemd start-up finished: every stream is up, `systemctl start` returns."""
        self.notify("READY=1")

    def status(self, text: str) -> None:
        """Set the one-line status shown by `systemctl status`."""
        self.notify("STATUS=" + " ".join(text.split()))

    def stopping(self) -> None:
        """Tell systemd shutdown began, so it waits for `TimeoutStopSec=` instead of guessing."""
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        """Ping the watchdog: the daemon is alive and healthy."""
        self.notify("WATCHDOG=1")

    def notify(self, *fields: str) -> None:
        """Send one datagram with the given `KEY=value` fields, one per line.

        Errors are logged once (`sd_notify_failed`) and then ignored: a lost notification must
        never take down ingestion.
        """
        if self._address is None:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                _log.warning("sd_notify_failed", error=str(exc), fields=list(fields))

    def close(self) -> None:
        """Release the socket; later calls reopen it."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


async def run_watchdog(
    notifier: Notifier,
    health: Callable[[], bool],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Ping the systemd watchdog at half its interval for as long as `health()` is true.

    Runs until cancelled. Returns at once when the unit has no watchdog. While `health()` is
    false the pings are withheld (logged once per transition), so systemd restarts a daemon
    whose streams are stuck; they resume if it recovers before the deadline.

    systemd arms the watchdog when the process starts, not when it reports READY, so start this
    task first and let `health()` be true while the streams are still connecting.

    Args:
        notifier: Where to send `WATCHDOG=1`.
        health: Cheap, synchronous check called before every ping. It should turn false only
            when a restart is the right cure (e.g. a stream stale for longer than its reconnect
            budget), not on every short reconnect.
        task_status: Signalled after the first check (and ping), or at once when disabled.
    """
    interval = notifier.watchdog_interval
    if interval is None:
        task_status.started()
        return
    period = interval / 2
    _log.info("watchdog_started", interval_s=interval, ping_every_s=period)
    healthy = True
    started = False
    deadline = anyio.current_time()
    while True:
        if health():
            notifier.watchdog()
            if not healthy:
                _log.info("watchdog_resumed")
            healthy = True
        elif healthy:
            _log.warning("watchdog_withheld", reason="unhealthy", interval_s=interval)
            healthy = False
        if not started:
            task_status.started()
            started = True
        # Deadlines from a fixed origin keep the period from drifting with the work done above.
        deadline = max(deadline + period, anyio.current_time())
        await anyio.sleep_until(deadline)
