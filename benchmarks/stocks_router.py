"""A stocks router with the default pipeline over scratch storage, for the router benchmarks."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from ingest.config import settings_from_mapping
from ingest.metrics import Metrics
from ingest.pipeline import indicator_columns
from ingest.router import StreamRouter
from storage.parquet import open_dataset
from storage.quarantine import Quarantine

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@asynccontextmanager
async def stocks_router(root: Path, symbols: list[str]) -> AsyncIterator[StreamRouter]:
    """A router of `symbols` writing under `root`, not yet running; its writers seal on exit."""
    settings = settings_from_mapping(
        {
            "ingest": {"data_dir": str(root), "streams": ["stocks"]},
            "streams": {"stocks": {"symbols": symbols}},
            "server": {"listen": ""},
        }
    )
    columns = indicator_columns(settings.pipeline)
    async with open_dataset(
        root, settings.storage, writer_id="bench", metadata={}, indicator_columns=columns
    ) as dataset:
        yield StreamRouter("stocks", settings, dataset, Quarantine(root, "bench"), Metrics())
