"""The router's flush grows with its symbol tasks; it tells the queue in front of it how much."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from ingest.config import settings_from_mapping
from ingest.metrics import Metrics
from ingest.router import BATCH_MESSAGES, BATCH_PER_SYMBOL, StreamRouter, pending_limit
from storage.parquet import open_dataset
from storage.quarantine import Quarantine

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("symbols", [10, 4096, 5000])
async def test_the_flush_scale_follows_the_symbol_tasks(tmp_path: Path, symbols: int) -> None:
    """1 while `BATCH_MESSAGES` covers every task's share; beyond, in proportion to the tasks."""
    names = [f"S{n:05}" for n in range(symbols)]
    settings = settings_from_mapping(
        {
            "ingest": {"data_dir": str(tmp_path), "streams": ["stocks"]},
            "streams": {"stocks": {"symbols": names}},
            "server": {"listen": ""},
        }
    )
    async with open_dataset(
        tmp_path, settings.storage, writer_id="t", metadata={}, indicator_columns=()
    ) as dataset:
        router = StreamRouter("stocks", settings, dataset, Quarantine(tmp_path, "t"), Metrics())
        async with anyio.create_task_group() as group:
            await group.start(router.run)
            assert router.symbol_tasks == symbols
            expected = max(1.0, symbols * BATCH_PER_SYMBOL / BATCH_MESSAGES)
            assert router.flush_scale() == pytest.approx(expected)
            assert pending_limit(symbols) == pytest.approx(BATCH_MESSAGES * expected)
            router.close()
