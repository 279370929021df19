"""``sensorcast ingest`` as a process with store.retention_days and downsample_after_days: the
ingest process prunes and downsamples its SQLite store at start, logs it, has the thread
watched, and stops cleanly on SIGTERM."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from service.records import Reading, StreamKey
from service.store.sqlite import HOUR_NS, SqliteStore
from tests.integration.ingest_helpers import IngestProcess
from tools.localservers import Mosquitto

pytestmark = pytest.mark.integration

DAY_NS = 24 * HOUR_NS
A = StreamKey("press", "temp")


def test_ingest_process_prunes_and_downsamples(mosquitto: Mosquitto, tmp_path: Path) -> None:
    now = time.time_ns()
    hour = now - now % HOUR_NS - 10 * DAY_NS  # an hour 10 days back: downsampled
    old = [Reading(A, now - 100 * DAY_NS + i * 10**9, 1.0) for i in range(500)]
    mid = [Reading(A, hour + i * 10**9, float(i % 2)) for i in range(600)]  # mean 0.5
    recent = [Reading(A, now - 60 * 10**9 + i * 10**9, 3.0) for i in range(10)]
    db = tmp_path / "s.db"
    store = SqliteStore(db)
    store.write(old + mid + recent)
    store.close()
    log = tmp_path / "ingest.log"
    proc = IngestProcess({
        "SENSORCAST_MQTT__URL": mosquitto.url,
        "SENSORCAST_MQTT__CLIENT_ID": "retention-ingest",
        "SENSORCAST_STORE__URL": f"sqlite:///{db}",
        "SENSORCAST_STORE__SPOOL_DIR": str(tmp_path / "spool"),
        "SENSORCAST_STORE__RETENTION_DAYS": "30",
        "SENSORCAST_STORE__DOWNSAMPLE_AFTER_DAYS": "7",
    }, log)
    proc.start()
    try:
        deadline = time.monotonic() + 30
        while "store retention: pruned" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        text = log.read_text()
        assert re.search(r"store retention: pruned 500 points before .* folded 600 readings before", text), text
        assert re.search(r"watchdog: .*store retention", text), text
        proc.kill(signal.SIGTERM)
        assert proc.proc is not None and proc.proc.returncode == 0, log.read_text()[-3000:]
    finally:
        proc.stop()
    store = SqliteStore(db)
    try:
        assert store.read_range(A, 0, now + 1) == [Reading(A, hour, 0.5), *recent]
    finally:
        store.close()
