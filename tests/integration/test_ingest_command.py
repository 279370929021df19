"""``sensorcast ingest`` as a process: SIGTERM flushes what is buffered and exits cleanly;
what the broker had not yet delivered stays queued for the next run."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from service.store import open_store
from tests.integration.ingest_helpers import (
    IngestProcess,
    Publisher,
    make_settings,
    readings,
    stored,
    wait_stored,
)
from tools.localservers import Influxd, Mosquitto

pytestmark = pytest.mark.integration


def test_sigterm_flushes_buffered_readings(mosquitto: Mosquitto, influxd: Influxd, tmp_path: Path) -> None:
    url = f"influxdb://127.0.0.1:{influxd.port}/fterm"
    env = {
        "SENSORCAST_MQTT__URL": mosquitto.url,
        "SENSORCAST_MQTT__CLIENT_ID": "term-ingest",
        "SENSORCAST_STORE__URL": url,
        "SENSORCAST_STORE__SPOOL_DIR": str(tmp_path / "spool"),
        "SENSORCAST_INGEST__TOPIC": "fterm/{device}/{quantity}",
        # Nothing is written until the batch is full or a minute passes: only the
        # SIGTERM flush can put these readings in the store.
        "SENSORCAST_INGEST__BATCH_SIZE": "1000000",
        "SENSORCAST_INGEST__BATCH_INTERVAL_S": "60",
    }
    proc = IngestProcess(env, tmp_path / "ingest.log")
    proc.start()
    pub = Publisher(mosquitto.port, client_id="term-pub")
    expected = readings(1_000, 10)
    store = open_store(make_settings(mosquitto.port, url, tmp_path / "unused").store)
    log = tmp_path / "ingest.log"
    try:
        pub.publish(expected, topic="fterm/{d}/{q}")
        pub.wait_acked()
        time.sleep(1.5)  # let the broker deliver (some of) them into the ingester's buffer
        assert stored(store, {r.stream for r in expected}) == []  # still only buffered
        proc.kill(signal.SIGTERM)
        assert proc.proc is not None and proc.proc.returncode == 0
        m = re.search(r"stopped: .*queued=0, stored=(\d+)", log.read_text())
        assert m, log.read_text()[-2000:]
        flushed = int(m.group(1))
        assert flushed > 0  # with a 60 s batch interval only the SIGTERM flush wrote these
        assert len(stored(store, {r.stream for r in expected})) == flushed
        # The rest stayed with the broker (persistent session): a new run brings it.
        proc.env["SENSORCAST_INGEST__BATCH_SIZE"] = "5000"
        proc.env["SENSORCAST_INGEST__BATCH_INTERVAL_S"] = "0.25"
        proc.start(wait_subscribed=False)
        got = wait_stored(store, expected)
    finally:
        pub.close()
        proc.stop()
        store.close()
    assert got == sorted(expected, key=lambda r: (r.stream, r.ts_ns))
