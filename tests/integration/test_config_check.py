"""``sensorcast config --check [--probe]`` (the real CLI, in a subprocess): the effective
settings with secrets redacted, validation, and probes of a real mosquitto and store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.localservers import Mosquitto, free_port

pytestmark = pytest.mark.integration


def _check(env: dict[str, str], cwd: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SENSORCAST_")}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "config", "--check", *flags], capture_output=True, text=True,
        timeout=60, env={**clean, **env}, cwd=cwd,
    )


def test_check_shows_the_effective_settings_redacted(tmp_path: Path) -> None:
    # One from the environment, one from .env in the working directory: both are effective.
    (tmp_path / ".env").write_text("SENSORCAST_API__PORT=9191\n")
    done = _check({"SENSORCAST_MQTT__URL": "mqtt://bob:hunter2@broker.lan:1884"}, tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "SENSORCAST_MQTT__URL=mqtt://bob:***@broker.lan:1884" in lines
    assert "SENSORCAST_API__PORT=9191" in lines
    assert "SENSORCAST_API__HOST=127.0.0.1  # default" in lines
    assert "hunter2" not in done.stdout + done.stderr
    assert lines[-1] == "settings: valid"


def test_check_refuses_invalid_settings_in_one_line(tmp_path: Path) -> None:
    done = _check({"SENSORCAST_STORE__URL": "bogus://x"}, tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "SENSORCAST_STORE__URL=bogus://x" in done.stderr


def test_probe_ok_against_real_broker_and_store(mosquitto: Mosquitto, tmp_path: Path) -> None:
    env = {"SENSORCAST_MQTT__URL": mosquitto.url, "SENSORCAST_STORE__URL": f"sqlite:///{tmp_path}/s.db"}
    done = _check(env, tmp_path, "--probe")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"probe broker {mosquitto.url}: ok (CONNACK from 127.0.0.1:{mosquitto.port})" in done.stdout
    assert f"probe store sqlite:///{tmp_path}/s.db: ok (ping answered)" in done.stdout


def test_probe_fails_on_unreachable_broker_and_store(tmp_path: Path) -> None:
    broker, store = free_port(), free_port()  # nothing listens on either
    env = {
        "SENSORCAST_MQTT__URL": f"mqtt://127.0.0.1:{broker}",
        "SENSORCAST_STORE__URL": f"influxdb://u:secret@127.0.0.1:{store}/db",
    }
    done = _check(env, tmp_path, "--probe", "--timeout", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"probe broker mqtt://127.0.0.1:{broker}: failed: " in done.stdout
    assert f"probe store influxdb://u:***@127.0.0.1:{store}/db: failed: " in done.stdout
    assert "secret" not in done.stdout
