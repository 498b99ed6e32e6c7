"""A client on small socket buffers, so a stalled reader is felt by the server within moments.

Loopback receive buffers grow to tens of megabytes, which would hide a stalled reader from the
fake's slow-client check for as long as a test runs. Real links to Alpaca are not like that.
"""

from __future__ import annotations

import functools
import socket
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    import pytest

__all__ = ["small_receive_buffer"]


def small_receive_buffer(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """The Alpaca source's WebSockets get `SO_RCVBUF = size` (set before they connect)."""

    def factory(addr_info: Any) -> socket.socket:
        family, kind, proto, _, _ = addr_info
        sock = socket.socket(family=family, type=kind, proto=proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        return sock

    original = aiohttp.ClientSession

    def session(*args: Any, **kwargs: Any) -> aiohttp.ClientSession:
        kwargs.setdefault("connector", aiohttp.TCPConnector(socket_factory=factory))
        return original(*args, **kwargs)

    # The source looks `aiohttp.ClientSession` up when it runs: patched for this test only.
    monkeypatch.setattr(aiohttp, "ClientSession", functools.partial(session))
