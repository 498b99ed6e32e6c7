"""The `ingest` command as users run it: real subprocesses, real signals, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingest.cli import main
from tests.dataset import count, leftovers

ROOT = Path(__file__).parent.parent


def write_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[ingest]\ndata_dir = "{tmp_path / "data"}"\n'
        '[server]\nlisten = ""\n'
        '[sim]\nticks_per_second = 50\nstart = "2024-07-01T14:30:00Z"\n' + extra
    )
    return path


def spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ingest", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


def wait_for_event(proc: subprocess.Popen[str], event: str, timeout: float = 30.0) -> list[str]:
    """Read JSON log lines until `event` appears; the lines read so far."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if f'"event": "{event}"' in line:
            return lines
    proc.kill()
    pytest.fail(f"{event} not logged within {timeout}s: {lines[-5:]}")


@pytest.mark.slow
class TestStopping:
    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
    def test_signal_flushes_everything_and_exits_zero(
        self, tmp_path: Path, signum: signal.Signals
    ) -> None:
        """A signal stops reading, seals every file and exits 0 with the summary."""
        config = write_config(tmp_path)
        proc = spawn("run", "--config", str(config), "--log-format", "json")
        wait_for_event(proc, "streams_ready")
        time.sleep(1.5)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert '"event": "signal_received"' in out
        assert "Parquet dataset:" in out
        data = tmp_path / "data"
        assert leftovers(data) == []
        assert count(data, "stocks", "trades") > 0
        assert count(data, "stocks", "bars") > 0

    def test_duration_stops_by_itself(self, tmp_path: Path) -> None:
        """--duration ends the run cleanly; the summary lists rows for all four streams."""
        config = write_config(tmp_path, "news_per_minute = 1200\n")
        proc = spawn("run", "--config", str(config), "--duration", "2", "--log-format", "json")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        summary = out[out.index("Parquet dataset:") :]
        for stream in ("stocks", "crypto", "options", "news"):
            assert f"\n{stream} " in summary, summary
        stopped = [json.loads(x) for x in out.splitlines() if '"daemon_stopped"' in x]
        assert stopped
        assert stopped[0]["rows"] > 0

    def test_streams_flag_overrides_config(self, tmp_path: Path) -> None:
        """--streams options,crypto runs exactly those streams."""
        config = write_config(tmp_path)
        proc = spawn(
            "run", "--config", str(config), "--duration", "1", "--streams", "options,crypto"
        )
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        written = {p.name for p in (tmp_path / "data").iterdir() if not p.name.startswith("_")}
        assert written == {"crypto", "options"}


class TestExitCodes:
    def test_bad_config_exits_2_with_one_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A config error prints one line naming the key, no traceback, exit 2."""
        config = write_config(tmp_path, '[pipeline]\nbars = ["time:1x"]\n')
        assert main(["run", "--config", str(config)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0
        assert err.startswith("ConfigError: config key 'pipeline.bars[0]'")

    def test_bad_streams_flag_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown stream name on the command line is a usage error."""
        assert main(["run", "--streams", "stocks,forex", "--duration", "0"]) == 2
        assert "'forex' is invalid" in capsys.readouterr().err

    def test_unknown_command_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Argparse errors are usage errors: exit 2, one line."""
        assert main(["frobnicate"]) == 2
        assert capsys.readouterr().err.startswith("ConfigError:")

    def test_replay_without_path_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--source replay needs --replay."""
        assert main(["run", "--source", "replay"]) == 2
        assert "--replay PATH" in capsys.readouterr().err

    def test_subprocess_exit_code_and_no_traceback(self, tmp_path: Path) -> None:
        """Through the console entry point too: exit 2, stderr without a traceback."""
        config = write_config(tmp_path, '[storage]\nroll_seconds = "1x"\n')
        proc = spawn("run", "--config", str(config))
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2
        assert "Traceback" not in err
        assert "'storage.roll_seconds': '1x' is invalid" in err


class TestCheckConfig:
    def test_prints_effective_config(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """check-config prints every section with the effective values and exits 0."""
        config = write_config(tmp_path, '[streams.stocks]\nsymbols = ["IBM"]\n')
        assert main(["check-config", "--config", str(config)]) == 0
        out = capsys.readouterr().out
        for section in ("[ingest]", "[alpaca]", "[streams.stocks]", "[pipeline]", "[storage]"):
            assert section in out
        assert 'symbols = ["IBM"]' in out
        assert 'bars = ["time:1m", "tick:100", "volume:10000", "dollar:1000000"]' in out

    def test_redacts_the_token(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """The server token never appears in check-config output."""
        config = tmp_path / "config.toml"
        config.write_text('[server]\ntoken = "s3cr3t-token"\n')
        assert main(["check-config", "--config", str(config)]) == 0
        out = capsys.readouterr().out
        assert "s3cr3t-token" not in out
        assert 'token = "<redacted>"' in out
