"""A real sd_notify receiver for tests: the systemd end of `NOTIFY_SOCKET`, on a temporary socket.

Reusable by end-to-end tests that start `ingest run` as a subprocess: put `listener.env` into the
child's environment and await `listener.wait_for("READY")`.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Self

import anyio

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

__all__ = ["Message", "NotifyListener"]


class Message(dict[str, str]):
    """One datagram's `KEY=value` fields, plus the monotonic time it was read."""

    received_at: float

    @classmethod
    def parse(cls, data: bytes) -> Message:
        """Split a datagram into its fields."""
        message = cls(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        message.received_at = time.monotonic()
        return message


class NotifyListener:
    """Binds an AF_UNIX datagram socket as systemd would and collects what arrives.

    Args:
        directory: Where to create a path socket; None binds an abstract socket (`@name`).
        watchdog_usec: Value for `WATCHDOG_USEC` in `env`, or None to leave the watchdog off.
    """

    def __init__(self, directory: Path | None = None, *, watchdog_usec: int | None = None):
        name = f"ingest-test-{uuid.uuid4().hex[:12]}"
        self.address = f"@{name}" if directory is None else str(directory / f"{name}.sock")
        self.watchdog_usec = watchdog_usec
        self.received: list[Message] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.setblocking(False)

    @property
    def env(self) -> dict[str, str]:
        """Environment variables telling a notifier (or a child process) where to send."""
        env = {"NOTIFY_SOCKET": self.address}
        if self.watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        return env

    def __enter__(self) -> Self:
        bind_to = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        self._socket.bind(bind_to)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._socket.close()
        if not self.address.startswith("@"):
            os.unlink(self.address)

    def _recv_nowait(self) -> Message | None:
        try:
            data = self._socket.recv(4096)
        except BlockingIOError:
            return None
        message = Message.parse(data)
        self.received.append(message)
        return message

    def drain_nowait(self) -> list[Message]:
        """Everything already queued in the socket, without yielding to the event loop."""
        messages = []
        while (message := self._recv_nowait()) is not None:
            messages.append(message)
        return messages

    async def receive(self) -> Message:
        """The next datagram (waits for it; bound the wait with `anyio.fail_after`)."""
        while (message := self._recv_nowait()) is None:
            await anyio.wait_readable(self._socket)
        return message

    async def wait_for(self, key: str, value: str | None = None) -> Message:
        """The next datagram carrying `key` (with `value`, if given); earlier ones are kept."""
        while True:
            message = await self.receive()
            if key in message and (value is None or message[key] == value):
                return message
