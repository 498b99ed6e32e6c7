"""Shared fixtures: asyncio backend (aiohttp runs only there) and small daemon settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import structlog
from blockbuster import blockbuster_ctx

from ingest.config import Settings, settings_from_mapping
from tests.storage.daemon import Daemon

if TYPE_CHECKING:
    from collections.abc import Iterator

DATA = Path(__file__).parent / "data"


@pytest.fixture
def anyio_backend() -> str:
    """Aiohttp and alpaca-py only run on asyncio."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """A test that ran the CLI must not leave structlog writing to a closed capture stream."""
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _reap_daemons() -> Iterator[None]:
    """A daemon subprocess never outlives its test, even one that failed midway."""
    yield
    Daemon.reap()


@pytest.fixture(autouse=True)
def _blockbuster() -> Iterator[None]:
    """Fail any test whose event loop makes a blocking call (file I/O, sleep, ...)."""
    with blockbuster_ctx() as bb:
        # structlog writes one line at a time to stdout; that is the logging design, not a bug.
        bb.functions["io.TextIOWrapper.write"].can_block_in("structlog/_output.py", "msg")
        yield


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Fast sim settings writing into a temporary data directory."""
    base = settings_from_mapping(
        {
            "ingest": {"data_dir": str(tmp_path / "data")},
            "sim": {"ticks_per_second": 50, "start": "2024-07-01T14:30:00Z"},
            "server": {"listen": ""},
        }
    )
    return base.replace(ingest=dataclasses.replace(base.ingest, data_dir=tmp_path / "data"))
