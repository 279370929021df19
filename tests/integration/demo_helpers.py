"""Run `sensorcast demo` as a subprocess and read its terminal (demo and browser tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$SENSORCAST_DEMO_MODELS, else the shipped demo model, else a tiny contract model built here."""
    if os.environ.get("SENSORCAST_DEMO_MODELS"):
        return Path(os.environ["SENSORCAST_DEMO_MODELS"])
    if list((REPO / "models" / "demo").glob("*/manifest.json")):
        return REPO / "models"
    pytest.importorskip("onnx")
    from tools.modelkit import KitSpec, write_model

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
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:  # closed at end of output, not left to the GC (ResourceWarning)
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
        self._reader.join(10)  # the pipe ends with the process; the reader then closes it


def tracked_demos() -> Iterator[type[Demo]]:
    started: list[Demo] = []

    class Tracked(Demo):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Tracked
    for d in started:
        d.stop()
