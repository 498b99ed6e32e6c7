"""Disk full and unwritable directories: a clear error and metric, no corrupt file, no loss."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import TYPE_CHECKING

import pyarrow.parquet as pq
import pytest

from tests.storage.daemon import ROOT, Daemon, stored_trades, write_config

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs at `path` (root only); the test is skipped where it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = os.geteuid() == 0 and (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    if not mounted:
        pytest.skip("needs root and permission to mount a tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(ballast: Path) -> Path:
    """Grow the ballast file (created before the daemon started) until the filesystem is full.

    Unbuffered: a buffered file would raise ENOSPC again when closing, flushing what is left.
    """
    for block in (65536, 512):
        with ballast.open("ab", buffering=0) as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * block)
    return ballast


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_refused(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest", "run", "--config", str(config), "--duration", "5"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
class TestUnwritable:
    def test_data_dir_below_a_file_exits_1_with_one_line(self, tmp_path: Path) -> None:
        """Nothing can be written at all: exit 1 with one `StorageError:` line, no traceback."""
        blocker = tmp_path / "blocker"
        blocker.write_text("")
        config = write_config(tmp_path)
        config.write_text(config.read_text().replace(str(tmp_path / "data"), str(blocker / "data")))
        done = start_refused(config)
        assert done.returncode == 1
        assert done.stderr.startswith("StorageError: ")
        assert done.stderr.count("\n") == 1
        assert "cannot be created" in done.stderr

    def test_read_only_data_dir_exits_1_with_one_line(self, tmp_path: Path) -> None:
        """A read-only directory (chmod, or a read-only mount for root) is refused at start."""
        data = tmp_path / "data"
        config = write_config(tmp_path)
        with contextlib.ExitStack() as stack:
            if os.geteuid() == 0:
                stack.enter_context(tmpfs(data, "1m", read_only=True))
            else:
                data.mkdir()
                data.chmod(0o555)
                stack.callback(data.chmod, 0o755)
            done = start_refused(config)
        assert done.returncode == 1, done.stderr
        assert done.stderr.startswith("StorageError: ")
        assert "is not writable" in done.stderr


@pytest.mark.slow
class TestDiskFull:
    @pytest.mark.parametrize(
        ("journal", "failing"), [(True, "_journal"), (False, "trades")], ids=["journal", "none"]
    )
    def test_full_disk_is_survived_and_nothing_is_lost(
        self, tmp_path: Path, journal: bool, failing: str
    ) -> None:
        """Disk full: errors logged and counted, the daemon keeps running and retries.

        Once space comes back it carries on; every file stays readable, every trade stored once.
        With the journal on, the journal's append fails first and seals wait for it (nothing is
        sealed ahead of the journal); without it, the seals fail and are retried.
        """
        # Room for what the daemon writes in the seconds before the ballast fills it, even on
        # a loaded machine; the ballast file exists before then, so opening it cannot fail.
        with tmpfs(tmp_path / "mnt", "16m") as mount:
            ballast = mount / "ballast"
            ballast.touch()
            config = write_config(
                tmp_path,
                f'roll_seconds = "0.3s"\njournal = {str(journal).lower()}',
                f'[server]\nlisten = "127.0.0.1:{free_port()}"\n',
                ingest='streams = ["stocks", "crypto"]',
            )
            config.write_text(
                config.read_text()
                .replace(str(tmp_path / "data"), str(mount / "data"))
                .replace('[server]\nlisten = ""\n', "")
            )
            daemon = Daemon(tmp_path / "run.log", "run", "--config", str(config))
            port = daemon.wait_for("http_server_started")["port"]
            daemon.wait_for("streams_ready")
            time.sleep(0.5)
            fill(ballast)
            event = "journal_append_failed" if journal else "seal_failed"
            assert daemon.wait_for(event, timeout=20)
            time.sleep(1.0)
            assert daemon.proc.poll() is None, "the daemon must keep running on a full disk"
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
            text = metrics.read().decode()
            assert f'ingest_storage_errors_total{{stream="stocks",table="{failing}"}}' in text
            for path in (mount / "data").rglob("*.parquet"):
                assert pq.read_table(path).num_rows > 0  # sealed files are whole
            ballast.unlink()
            if journal:
                daemon.wait_for("journal_append_recovered", timeout=20)
            time.sleep(1.0)
            assert daemon.stop() == 0, daemon.log.read_text()[-2000:]
            data = mount / "data"
            assert list(data.glob("_journal/*/*.arrows")) == []
            assert [p for p in data.rglob("*.tmp")] == []
            for stream in ("stocks", "crypto"):
                stored = stored_trades(data, stream)
                assert set(stored.values()) == {1}
                by_symbol: dict[str, list[int]] = {}
                for symbol, trade_id in stored:
                    by_symbol.setdefault(symbol, []).append(trade_id)
                for symbol, ids in by_symbol.items():
                    assert sorted(ids) == list(range(1, len(ids) + 1)), (stream, symbol)
