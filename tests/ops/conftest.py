"""Fixtures for the operations tests: asyncio only (aiohttp needs it) and no blocking calls."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from blockbuster import blockbuster_ctx

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio, the only loop aiohttp supports."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_blocking_calls() -> Iterator[None]:
    """Fail any test that makes a blocking call on the event loop thread."""
    with blockbuster_ctx():
        yield
