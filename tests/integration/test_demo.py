"""`sensorcast demo` end to end, as a user runs it: a subprocess on embedded defaults.

Embedded amqtt broker, SQLite, the serve pipeline and the simulator, all in the demo
process. It must print forecasts, announce the injected anomaly and raise an alert for
it, then stop cleanly on Ctrl-C (SIGINT) or at --duration.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped demo model when present; else a tiny contract model built here."""
    if list((REPO / "models" / "demo").glob("*/manifest.json")):
        return REPO / "models"
    pytest.importorskip("onnx")
    from service.runtime.modelkit import KitSpec, write_model

    d = tmp_path_factory.mktemp("models")
    write_model(d, KitSpec(name="demo", version="kit", cadence_s=1.0, warmup_steps=20, horizon=12, std=(0.3,)))
    return d


class Demo:
    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "demo", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float, after: int = -1) -> re.Match[str]:
        """The first line (with index > ``after``) matching ``pattern``."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        with self._cond:
            while True:
                for line in self.lines[after + 1 :]:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._cond.wait(0.2)):
                    raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines[-60:]))
                self._cond.wait(min(left, 0.5))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def demo_factory() -> Iterator[type[Demo]]:
    started: list[Demo] = []

    class Tracked(Demo):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Tracked
    for d in started:
        d.stop()


def test_demo_shows_forecasts_and_an_alert_for_the_injected_anomaly(
    models_dir: Path, demo_factory: type[Demo], tmp_path: Path
) -> None:
    demo = demo_factory("--models", str(models_dir), "--print-every", "2", "--data-dir", str(tmp_path))
    url = demo.wait_for(r"dashboard: (http://127\.0\.0\.1:\d+/)", timeout=60).group(1)
    assert url
    demo.wait_for(r"^forecast dev\d\d/\w+: now [-\d.]+ -> next [-\d.]+ \[[-\d.]+, [-\d.]+\]", timeout=30)
    inject = demo.wait_for(r"^INJECT  spike on (\S+) at", timeout=40)
    stream = inject.group(1)
    # The alert for the injected spike, on that stream, after the injection was announced.
    demo.wait_for(rf"^ALERT FIRING\s+{re.escape(stream)} at ", timeout=20, after=demo.lines.index(inject.string))
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
