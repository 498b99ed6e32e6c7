"""The router's flush grows with its symbol tasks; small batches that close nothing go together."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

from ingest import router as router_module
from ingest.config import settings_from_mapping
from ingest.metrics import Metrics
from ingest.pipeline import indicator_columns
from ingest.pipeline.steady import Steady, take_steady
from ingest.router import BATCH_MESSAGES, BATCH_PER_SYMBOL, StreamRouter, pending_limit
from storage.parquet import open_dataset
from storage.quarantine import Quarantine
from streams.base import Frame
from streams.messages import AnyMessage, Correction, StockTrade
from tests.dataset import query

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


START_NS = 1_719_844_200_000_000_000  # 2024-07-01T14:30:00Z


def _stamp(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def _trickle() -> list[list[AnyMessage]]:
    """One trade a frame over two symbols, a price spike among them, then a correction."""
    frames: list[list[AnyMessage]] = []
    prices = {"AAA": 100.0, "BBB": 50.0}
    for i in range(160):
        symbol = "AAA" if i % 2 else "BBB"
        prices[symbol] += 0.01 * ((i * 7) % 5 - 2)
        price = prices[symbol] * (1.3 if i == 121 else 1.0)
        stamp = _stamp(START_NS + i * 1_000_000)
        frames.append([StockTrade(S=symbol, t=stamp, i=i, x="V", p=price, s=1.0 + i % 3)])
    fixed = Correction(
        S="AAA", t=_stamp(START_NS + 170_000_000), x="V", oi=101, op=0.0, os=0.0, ci=999,
        cp=101.0, cs=4.0,
    )  # fmt: skip
    return [*frames, [fixed]]


async def _run_trickle(root: Path) -> StreamRouter:
    settings = settings_from_mapping(
        {
            "ingest": {"data_dir": str(root), "streams": ["stocks"]},
            "streams": {"stocks": {"symbols": ["AAA", "BBB"]}},
            "server": {"listen": ""},
        }
    )
    async with open_dataset(
        root,
        settings.storage,
        writer_id="t",
        metadata={},
        indicator_columns=indicator_columns(settings.pipeline),
    ) as dataset:
        router = StreamRouter("stocks", settings, dataset, Quarantine(root, "t"), Metrics())
        async with anyio.create_task_group() as group:
            await group.start(router.run)
            for messages in _trickle():
                recv_ns = time.time_ns()
                for message in messages:
                    message.recv_ns = recv_ns
                await router.deliver(Frame("stocks", recv_ns, messages))
                for _ in range(8):  # the flusher and the symbol task take their turns
                    await anyio.lowlevel.checkpoint()
            router.close()
    return router


BAR_COLUMNS = (
    "symbol, bar_type, ts, open, high, low, close, volume, trade_count, vwap, session_vwap, "
    "corrections, partial"
)


def test_trickled_trades_take_the_steady_path_with_the_same_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches taken together leave what their symbol tasks would: rows, counts, corrections."""
    taken: list[int] = []

    def counting(*args: Any) -> Steady:
        steady = take_steady(*args)
        taken.append(sum(steady.taken))
        return steady

    monkeypatch.setattr(router_module, "take_steady", counting)
    steady = anyio.run(_run_trickle, tmp_path / "steady")
    monkeypatch.setattr(router_module, "STEADY_MAX", 0)  # nothing offered: every batch a task's
    alone = anyio.run(_run_trickle, tmp_path / "alone")
    # The first trades fill each symbol's anomaly window in its task; most of the rest are taken.
    assert sum(taken) > 100
    assert len(taken) < 170  # and none was offered in the second run

    for router in (steady, alone):
        assert {s: state.messages for s, state in router.symbols.items()} == {
            "AAA": 81,
            "BBB": 80,
        }
    for table, columns, order in (
        ("bars", BAR_COLUMNS, "symbol, bar_type, ts"),
        ("anomalies", "symbol, ts, price, zscore", "symbol, ts"),
        ("corrections", "symbol, applied", "symbol"),
    ):
        sql = f"select {columns} from t order by {order}"
        got = query(tmp_path / "steady", "stocks", table, sql)
        assert got == query(tmp_path / "alone", "stocks", table, sql), table
        assert got, table
    # The corrected trade was remembered on the steady path: every open bar was restated.
    assert query(tmp_path / "steady", "stocks", "corrections", "select applied from t") == [
        ("open_bar",)
    ]
