"""The daemon's Arrow memory pool: the C library's allocator, unless the user chose one.

pyarrow allocates from mimalloc by default. mimalloc hands freed memory back to the kernel
within milliseconds, so the next flush touches fresh pages again; here (a 2-vCPU VM) one of
those page faults now and then costs 4-7 ms of kernel time inside an ordinary Arrow call (a
timestamp cast, a dictionary encode), and at 100k ticks/s offered a stall that long is the p99
frame latency. glibc's malloc keeps small and medium blocks for reuse: no such stalls in the same
runs, the same throughput, ~70 MB less peak RSS (docs/performance.md, "Loop stalls and warm-up").
Arrow's own switch, the `ARROW_DEFAULT_MEMORY_POOL` environment variable, still wins when set.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

import pyarrow as pa

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["POOL_VARIABLE", "daemon_memory_pool"]

POOL_VARIABLE: Final = "ARROW_DEFAULT_MEMORY_POOL"


@contextmanager
def daemon_memory_pool() -> Iterator[pa.MemoryPool]:
    """The system pool as Arrow's default while the daemon runs; the previous one afterwards.

    Buffers remember the pool they came from, so switching back frees nothing wrongly.
    """
    previous = pa.default_memory_pool()
    if os.environ.get(POOL_VARIABLE):
        yield previous
        return
    pool = pa.system_memory_pool()
    pa.set_memory_pool(pool)
    try:
        yield pool
    finally:
        pa.set_memory_pool(previous)
