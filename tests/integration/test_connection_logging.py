"""serve says what is wrong in its log: broker and store outages at WARNING while they last
(rate-limited, and once more when they are back), every alert event at INFO."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from service.config import Settings
from service.connwatch import ConnectionWatch
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.records import Alert, StreamKey
from tools.localservers import free_port

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_outage_logged_after_grace_then_rate_limited_then_back(caplog: pytest.LogCaptureFixture) -> None:
    up = [False]
    clock = Clock()
    watch = ConnectionWatch({"broker": lambda: (up[0], "cannot reach it")}, grace_s=5, repeat_s=60, clock=clock)
    caplog.set_level(logging.INFO, logger="sensorcast.connections")
    for t in (0, 2, 4.9):  # a normal connect takes a moment: no warning yet
        clock.now = t
        watch.poll()
    assert caplog.records == []
    for t in (5, 6, 30, 64.9, 65):
        clock.now = t
        watch.poll()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "broker: cannot reach it (down for 5 s; retrying)",
        "broker: cannot reach it (down for 65 s; retrying)",
    ]
    up[0] = True
    clock.now = 70
    watch.poll()
    watch.poll()
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        "broker: reachable again after 70 s"
    ]


def _pipeline(mqtt_url: str, tmp_path: Path) -> Pipeline:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, roles="ingest",
        mqtt={"url": mqtt_url, "client_id": f"test-connwatch-{free_port()}", "reconnect_max_s": 1},
        store={"url": "memory://", "spool_dir": str(tmp_path / "spool")},
    )
    return Pipeline.build(settings, Metrics())


def _broker_warnings(pipe: Pipeline, caplog: pytest.LogCaptureFixture, wait_s: float) -> list[str]:
    """Poll the real pipeline's watch (no grace) until wait_s has passed or it warned."""
    assert pipe.connwatch is not None
    pipe.connwatch.grace_s = 0
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        pipe.connwatch.poll()
        found = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "broker" in r.getMessage()]
        if found:
            return found
        time.sleep(0.1)
    return []


def test_unreachable_broker_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens here
    pipe = _pipeline(f"mqtt://user:hunter2@127.0.0.1:{port}", tmp_path)
    caplog.set_level(logging.INFO, logger="sensorcast.connections")
    pipe.start()
    try:
        found = _broker_warnings(pipe, caplog, wait_s=5)
    finally:
        pipe.stop()
    assert found and found[0].startswith(f"broker (ingest): cannot reach the MQTT broker 127.0.0.1:{port}")
    assert "hunter2" not in caplog.text


def test_every_alert_event_is_one_info_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pipe = Pipeline(Settings(_env_file=None), Metrics())  # type: ignore[call-arg]
    alert = Alert(
        key=StreamKey("m1", "temp"), quantity="temp", state="firing", ts_ns=1, value=93.5, expected=71.25,
        lower=65.0, upper=77.5, score=0.9993, model="demo", model_version="1", warm=True,
    )
    caplog.set_level(logging.INFO, logger="service.pipeline")
    pipe.on_alert(alert)
    assert [r.getMessage() for r in caplog.records] == [
        "alert m1/temp firing: value 93.5, expected 71.25, score 0.9993"
    ]
