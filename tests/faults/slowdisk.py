"""A slow disk: every Parquet file takes `seconds` longer to write (in the writer's thread)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import storage.parquet

if TYPE_CHECKING:
    import pytest

__all__ = ["slow_disk"]


def slow_disk(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Delay every sealed file by `seconds`; the real write still happens."""
    real = storage.parquet.write_parquet_atomically

    def slow(*args: Any, **kwargs: Any) -> None:
        time.sleep(seconds)  # runs in the writer's worker thread, like a slow fsync
        real(*args, **kwargs)

    monkeypatch.setattr(storage.parquet, "write_parquet_atomically", slow)
