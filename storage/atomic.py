"""Filesystem primitives the dataset's atomicity rests on.

Durable renames (fsync of the directory), the per-table lock that lets writers and compaction
share a table directory, and the atomic exchange of two directories (Linux `renameat2` with
`RENAME_EXCHANGE`), which is how compaction swaps a partition's files in one step.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

from ingest.errors import StorageError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = ["LOCK_NAME", "exchange_directories", "fsync_dir", "table_lock"]

LOCK_NAME: Final = ".lock"
"""Hidden, so no reader globbing `*.parquet` or discovering hive partitions ever sees it."""
_AT_FDCWD: Final = -100
_RENAME_EXCHANGE: Final = 2


def fsync_dir(path: Path) -> None:
    """Make a create, rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def table_lock(table_dir: Path, *, shared: bool, wait: bool = True) -> Iterator[bool]:
    """Hold `<table_dir>/.lock`: writers share it, compaction takes it alone for its swap.

    Yields whether the lock is held (always true when `wait`).

    Raises:
        StorageError: the lock file cannot be created.
    """
    try:
        table_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(table_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        msg = f"cannot lock {str(table_dir)!r}: {exc.strerror or exc}"
        raise StorageError(msg) from exc
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode if wait else mode | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def exchange_directories(a: Path, b: Path) -> None:
    """Swap two directories in one atomic step: a reader sees one or the other, never neither.

    Raises:
        StorageError: the platform or filesystem cannot exchange directories atomically.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:  # pragma: no cover -- glibc before 2.28, or not Linux
        msg = "atomic directory exchange (renameat2) is not available on this platform"
        raise StorageError(msg)
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        errno = ctypes.get_errno()
        msg = f"cannot exchange {str(a)!r} and {str(b)!r}: {os.strerror(errno)}"
        raise StorageError(msg)
