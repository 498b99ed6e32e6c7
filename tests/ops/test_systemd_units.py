"""The shipped systemd units pass `systemd-analyze verify` and carry the settings we rely on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
BINARY = "/opt/ingest/.venv/bin/ingest"
UNITS = [
    pytest.param("ingest.service", "ingest.service", id="single"),
    pytest.param("ingest@.service", "ingest@0-4.service", id="shard-template"),
]


def verify(unit_text: str, unit_name: str, instance: str, tmp_path: Path) -> str:
    """Run `systemd-analyze verify` on a copy whose ExecStart binary exists here; its output."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail(
            "systemd-analyze is not installed: install the `systemd` package "
            "(apt-get update && apt-get install -y systemd) to verify the units"
        )
    assert BINARY in unit_text
    (tmp_path / unit_name).write_text(unit_text.replace(BINARY, sys.executable))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / instance)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


class TestUnits:
    @pytest.mark.parametrize(("unit", "instance"), UNITS)
    def test_passes_systemd_analyze_verify(self, unit: str, instance: str, tmp_path: Path) -> None:
        """No error and no warning about our unit (unknown keys and bad values only warn)."""
        output = verify((SYSTEMD_DIR / unit).read_text(), unit, instance, tmp_path)
        assert str(tmp_path) not in output, output

    def test_fails_rather_than_skips_without_systemd_analyze(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A machine without systemd-analyze fails the check and says what to install."""
        monkeypatch.setattr(shutil, "which", lambda name: None)
        with pytest.raises(pytest.fail.Exception, match=r"install the `systemd` package"):
            verify("", "ingest.service", "ingest.service", tmp_path)

    def test_verification_catches_a_broken_unit(self, tmp_path: Path) -> None:
        """The check above can fail: a bad value in a copy of the unit is reported."""
        text = (SYSTEMD_DIR / "ingest.service").read_text().replace("Type=notify", "Type=bogus")
        output = verify(text, "ingest.service", "ingest.service", tmp_path)
        assert "Failed to parse service type" in output

    @pytest.mark.parametrize(("unit", "instance"), UNITS)
    def test_declares_the_operational_contract(self, unit: str, instance: str) -> None:
        """Notify type, watchdog, restart policy, stop timeout above the seal grace, hardening."""
        lines = set((SYSTEMD_DIR / unit).read_text().splitlines())
        required = {
            "Type=notify",
            "NotifyAccess=main",
            "WatchdogSec=30",
            "Restart=on-failure",
            "RestartSec=5",
            "TimeoutStopSec=60",
            "EnvironmentFile=-/etc/ingest/ingest.env",
            "DynamicUser=yes",
            "StateDirectory=ingest",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/ingest",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
            "SystemCallFilter=@system-service",
            "CapabilityBoundingSet=",
            "LockPersonality=yes",
        }
        assert required <= lines
        assert not any(line.startswith("MemoryDenyWriteExecute=") for line in lines)

    def test_template_passes_the_instance_as_the_shard(self) -> None:
        """`ingest@0-4` runs `--shard 0-4` with its own config (its own listen port)."""
        text = (SYSTEMD_DIR / "ingest@.service").read_text()
        assert (
            f"ExecStart={BINARY} run --config /etc/ingest/ingest@%i.toml --shard %i "
            "--log-format json"
        ) in text.splitlines()

    def test_single_unit_runs_the_documented_command(self) -> None:
        """The single unit runs exactly the command docs/operations.md describes."""
        text = (SYSTEMD_DIR / "ingest.service").read_text()
        assert (
            f"ExecStart={BINARY} run --config /etc/ingest/config.toml --log-format json"
        ) in text.splitlines()

    def test_environment_example_holds_no_secret(self) -> None:
        """The example env file names the variables and leaves them empty."""
        lines = (SYSTEMD_DIR / "ingest.env.example").read_text().splitlines()
        assignments = [line for line in lines if line and not line.startswith("#")]
        assert assignments == ["APCA_API_KEY_ID=", "APCA_API_SECRET_KEY="]
