"""The daemon allocates Arrow memory from the system pool, unless the user chose a pool."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from ingest.arrowpool import POOL_VARIABLE, daemon_memory_pool

if TYPE_CHECKING:
    import pytest


def test_the_system_pool_while_the_daemon_runs_and_the_previous_one_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(POOL_VARIABLE, raising=False)
    before = pa.default_memory_pool().backend_name
    with daemon_memory_pool() as pool:
        assert pool.backend_name == "system"
        assert pa.default_memory_pool().backend_name == "system"
        kept = pa.array(range(10_000), pa.int64())  # outlives the switch back
    assert pa.default_memory_pool().backend_name == before
    assert kept.sum().as_py() == sum(range(10_000))


def test_a_pool_chosen_in_the_environment_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POOL_VARIABLE, "mimalloc")
    before = pa.default_memory_pool().backend_name
    with daemon_memory_pool() as pool:
        assert pool.backend_name == before
        assert pa.default_memory_pool().backend_name == before
