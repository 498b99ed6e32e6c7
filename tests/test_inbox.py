"""The symbol task's inbox: bounded, everything waiting taken at once, closed cleanly."""

from __future__ import annotations

import anyio
import pytest

from ingest.inbox import Inbox

pytestmark = pytest.mark.anyio


async def test_the_reader_takes_every_waiting_item_in_order() -> None:
    inbox = Inbox[int](8)
    for i in range(5):
        assert inbox.put_nowait(i)
    assert len(inbox) == 5
    assert await inbox.take_all() == [0, 1, 2, 3, 4]
    assert len(inbox) == 0


async def test_a_full_inbox_refuses_put_nowait_and_put_waits_for_room() -> None:
    inbox = Inbox[int](2)
    assert inbox.put_nowait(1)
    assert inbox.put_nowait(2)
    assert not inbox.put_nowait(3)
    done = anyio.Event()

    async def writer() -> None:
        await inbox.put(3)
        done.set()

    async with anyio.create_task_group() as group:
        group.start_soon(writer)
        await anyio.wait_all_tasks_blocked()
        assert not done.is_set()
        assert await inbox.take_all() == [1, 2]
        with anyio.fail_after(5):
            await done.wait()
    assert await inbox.take_all() == [3]


async def test_the_reader_waits_for_an_item() -> None:
    inbox = Inbox[str](4)
    taken: list[list[str] | None] = []

    async def reader() -> None:
        taken.append(await inbox.take_all())

    async with anyio.create_task_group() as group:
        group.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        assert taken == []
        inbox.put_nowait("a")
    assert taken == [["a"]]


async def test_after_close_the_reader_drains_then_gets_none() -> None:
    inbox = Inbox[int](4)
    inbox.put_nowait(7)
    inbox.close()
    with pytest.raises(anyio.ClosedResourceError):
        inbox.put_nowait(8)
    assert await inbox.take_all() == [7]
    assert await inbox.take_all() is None


async def test_close_wakes_a_waiting_reader() -> None:
    inbox = Inbox[int](4)
    taken: list[list[int] | None] = []

    async def reader() -> None:
        taken.append(await inbox.take_all())

    async with anyio.create_task_group() as group:
        group.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        inbox.close()
    assert taken == [None]
