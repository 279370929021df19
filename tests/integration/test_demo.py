"""`sensorcast demo` end to end, as a user runs it: a subprocess on embedded defaults.

Embedded amqtt broker, SQLite, the serve pipeline and the simulator, all in the demo
process. It must print forecasts, announce the injected anomaly and raise an alert for
it, then stop cleanly on Ctrl-C (SIGINT) or at --duration.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.demo_helpers import REPO, Demo, demo_models, tracked_demos
from tools.localservers import Mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_models(tmp_path_factory)


@pytest.fixture
def demo_factory() -> Iterator[type[Demo]]:
    yield from tracked_demos()


def test_demo_shows_forecasts_and_an_alert_for_the_injected_anomaly(
    models_dir: Path, demo_factory: type[Demo], tmp_path: Path
) -> None:
    demo = demo_factory("--models", str(models_dir), "--print-every", "2", "--data-dir", str(tmp_path))
    url = demo.wait_for(r"dashboard: (http://127\.0\.0\.1:\d+/)", timeout=60).group(1)
    assert url
    demo.wait_for(r"^forecast dev\d\d/\w+: now [-\d.]+ -> next [-\d.]+ \[[-\d.]+, [-\d.]+\]", timeout=30)
    inject = demo.wait_for(r"^INJECT  spike on (\S+) at", timeout=40)
    stream = inject.group(1)
    # The alert for the injected spike, on that stream, naming its kind, after the injection was announced.
    demo.wait_for(rf"^ALERT FIRING\s+\w+\s+{re.escape(stream)} at ", timeout=20, after=demo.lines.index(inject.string))
    # Ctrl-C stops everything cleanly.
    demo.proc.send_signal(signal.SIGINT)
    assert demo.proc.wait(timeout=30) == 0
    demo.wait_for(r"^demo stopped after \d+ s: \d+ forecasts and \d+ alert events shown", timeout=5)
    # What it wrote: the SQLite store with the readings and the ground truth.
    assert (tmp_path / "sensorcast.db").stat().st_size > 10_000
    assert "spike" in (tmp_path / "truth.csv").read_text()
    assert not [ln for ln in demo.lines if "Traceback" in ln]


def test_demo_duration_bounds_the_run_and_cleans_up(models_dir: Path, demo_factory: type[Demo]) -> None:
    before = set(Path("/tmp").glob("sensorcast-demo-*"))
    t0 = time.monotonic()
    demo = demo_factory("--models", str(models_dir), "--duration", "6", "--print-every", "2")
    assert demo.proc.wait(timeout=90) == 0
    assert time.monotonic() - t0 < 60
    demo.wait_for(r"^forecast ", timeout=1)
    demo.wait_for(r"^demo stopped", timeout=1)
    assert set(Path("/tmp").glob("sensorcast-demo-*")) <= before  # temporary data removed


def test_demo_without_a_model_says_what_to_do(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", "demo", "--models", str(tmp_path), "--port", "0"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert proc.returncode != 0
    assert "no usable model found" in proc.stderr and "models/demo" in proc.stderr


def test_demo_on_an_external_mqtt5_broker(models_dir: Path, demo_factory: type[Demo], mosquitto: Mosquitto) -> None:
    # --mqtt-url: the same demo on a real mosquitto, the ingester speaking MQTT 5.
    demo = demo_factory("--models", str(models_dir), "--mqtt-url", mosquitto.url, "--duration", "6",
                        "--print-every", "2")
    assert demo.proc.wait(timeout=90) == 0
    demo.wait_for(rf"broker {re.escape(mosquitto.url)}$", timeout=1)
    demo.wait_for(r"^forecast dev\d\d/\w+: now ", timeout=1)
