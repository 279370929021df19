"""Settings that would lose data or expose write routes stop ``sensorcast serve`` and
``sensorcast ingest`` at start-up with a clear message (exit 2, no traceback), before any
connection is made."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import IngestSettings, Settings

REPO = Path(__file__).resolve().parents[2]


def _run(command: str, tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SENSORCAST_")}
    # Nothing listens there: a command that got as far as connecting would hang or fail later.
    base.update(SENSORCAST_MQTT__URL="mqtt://127.0.0.1:9", SENSORCAST_STORE__URL=f"sqlite:///{tmp / 'db'}",
                SENSORCAST_STORE__SPOOL_DIR=str(tmp / "spool"), **env)
    return subprocess.run([sys.executable, "-m", "service.cli", command], cwd=tmp, env=base,
                          capture_output=True, text=True, timeout=60)


def test_qos2_is_refused_by_the_settings() -> None:
    with pytest.raises(ValidationError, match=r"ingest\.qos=2 is not supported: paho sends PUBREC"):
        IngestSettings(qos=2)  # type: ignore[call-arg]
    assert IngestSettings(qos=1).qos == 1 and IngestSettings(qos=0).qos == 0  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Settings(ingest={"qos": 2})  # type: ignore[call-arg,arg-type]


@pytest.mark.parametrize("command", ["serve", "ingest"])
def test_qos2_stops_the_command_with_the_reason(tmp_path: Path, command: str) -> None:
    done = _run(command, tmp_path, SENSORCAST_INGEST__QOS="2")
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"sensorcast {command}: refusing to start:" in done.stderr
    assert "ingest.qos=2 is not supported" in done.stderr and "Traceback" not in done.stderr


def test_serve_refuses_open_write_routes_on_a_public_address(tmp_path: Path) -> None:
    done = _run("serve", tmp_path, SENSORCAST_API__HOST="0.0.0.0")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "the API would bind '0.0.0.0' (not loopback) with no API key" in done.stderr
    assert "SENSORCAST_API__ALLOW_OPEN=true" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "spool").exists()  # refused before anything was opened


def test_unknown_role_stops_serve_with_the_reason(tmp_path: Path) -> None:
    done = _run("serve", tmp_path, SENSORCAST_ROLES="ingest,training")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "sensorcast serve: refusing to start:" in done.stderr
    assert "roles: ['training'] not understood" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "spool").exists()  # refused before anything was opened
