"""A symbol task's inbox: a bounded queue whose reader takes everything waiting at once.

A memory object stream costs a checkpoint (a pass of the event loop), an event and a receiver
object on every `receive`. At a trickle, when each flush hands a symbol one small batch, that was
18 % of the loop's time. A symbol task merges every batch waiting into one pipeline call anyway,
so the inbox hands them all over in one list, and its reader waits on an event only when there is
nothing to take.

The events are asyncio's own, cleared and reused. The daemon runs on asyncio only (aiohttp needs
it), and an `anyio.Event` looks the backend up each time one is made, and is made anew for each
wait: a hand-over to a waiting task took 5.5 µs that way and takes 2.0 now (200 tasks,
`put_nowait` then `take_all`), on a path every symbol batch takes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

import anyio

__all__ = ["Inbox"]

T = TypeVar("T")


class Inbox(Generic[T]):
    """Bounded: `put` waits while `limit` items are waiting. One reader, any number of writers."""

    __slots__ = ("_closed", "_items", "_limit", "_ready", "_room")

    def __init__(self, limit: int) -> None:
        self._items: deque[T] = deque()
        self._limit = max(limit, 1)
        self._ready = asyncio.Event()
        """Set when an item arrives or on close; cleared each time the reader has to wait."""
        self._room = asyncio.Event()
        """Pulsed (set, then cleared) when a full inbox is emptied: wakes the waiting writers."""
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: T) -> bool:
        """Queue `item` unless the inbox is full; whether it was queued.

        Raises:
            anyio.ClosedResourceError: the inbox was closed.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        if len(self._items) >= self._limit:
            return False
        self._items.append(item)
        self._ready.set()
        return True

    async def put(self, item: T) -> None:
        """Queue `item`, waiting while the inbox is full."""
        while not self.put_nowait(item):
            await self._room.wait()

    def close(self) -> None:
        """No more items: the reader takes what is left, then gets None."""
        self._closed = True
        self._ready.set()

    async def take_all(self) -> list[T] | None:
        """Every waiting item, oldest first (waits for one); None once closed and empty."""
        while not self._items:
            if self._closed:
                return None
            self._ready.clear()  # no item can arrive before the wait: nothing is missed
            await self._ready.wait()
        items = list(self._items)
        self._items.clear()
        if len(items) >= self._limit:  # only a full inbox can have writers waiting
            self._room.set()
            self._room.clear()
        return items
