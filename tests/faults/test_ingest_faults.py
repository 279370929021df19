"""Ingest under faults, on real servers: nothing acknowledged is ever lost or doubled.

Each test owns the server it kills (``fresh_*`` fixtures).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service.ingest.ingester import Ingester
from service.localservers import Influxd, Mosquitto
from service.metrics import Metrics
from service.store import open_store
from tests.integration.ingest_helpers import (
    IngestProcess,
    Publisher,
    make_settings,
    readings,
    run_in_thread,
    stored,
    wait_stored,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def by_key(rs: list) -> list:  # type: ignore[type-arg]
    return sorted(rs, key=lambda r: (r.stream, r.ts_ns))


def test_influxd_down_mid_stream_spools_and_replays(
    mosquitto: Mosquitto, fresh_influxd: Callable[..., Influxd], tmp_path: Path
) -> None:
    influxd = fresh_influxd()
    settings = make_settings(mosquitto.port, f"influxdb://127.0.0.1:{influxd.port}/sensorcast", tmp_path / "spool",
                             client_id="f-influx-down", topic="fdown/{device}/{quantity}")
    store = open_store(settings.store)
    ing = Ingester(settings, store, Metrics())
    ing.start()
    assert ing.source is not None and ing.source.subscribed.wait(10)
    pub = Publisher(mosquitto.port, client_id="f-influx-down-pub")
    expected = readings(12_000, 100)
    t = run_in_thread(lambda: pub.publish(expected, rate=2000, topic="fdown/{d}/{q}"))
    try:
        time.sleep(1.5)
        influxd.kill(signal.SIGKILL)
        time.sleep(4)
        spooled_while_down = ing.status().spool_readings
        influxd.start()
        t.join(60)
        pub.wait_acked()
        got = wait_stored(store, expected)
        deadline = time.monotonic() + 30
        while ing.status().spool_readings and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        pub.close()
        ing.stop()
    assert spooled_while_down > 0, "the outage should have sent batches to the spool"
    assert got == by_key(expected)  # every reading, none twice, values exact
    assert ing.status().spool_readings == 0
    assert ing.metrics.store_errors._value.get() > 0
    store.close()


def test_ingester_sigkilled_mid_stream_loses_nothing(
    mosquitto: Mosquitto, influxd: Influxd, tmp_path: Path
) -> None:
    url = f"influxdb://127.0.0.1:{influxd.port}/fkill"
    env = {
        "SENSORCAST_MQTT__URL": mosquitto.url,
        "SENSORCAST_MQTT__CLIENT_ID": "f-kill-ingest",
        "SENSORCAST_STORE__URL": url,
        "SENSORCAST_STORE__SPOOL_DIR": str(tmp_path / "spool"),
        "SENSORCAST_INGEST__TOPIC": "fkill/{device}/{quantity}",
    }
    proc = IngestProcess(env, tmp_path / "ingest.log")
    proc.start()
    pub = Publisher(mosquitto.port, client_id="f-kill-pub")
    expected = readings(10_000, 100)
    t = run_in_thread(lambda: pub.publish(expected, rate=2500, topic="fkill/{d}/{q}"))
    store = open_store(make_settings(mosquitto.port, url, tmp_path / "unused").store)
    try:
        time.sleep(1.5)
        proc.kill(signal.SIGKILL)
        partial = len(stored(store, {r.stream for r in expected}))
        time.sleep(1.0)
        proc.start(wait_subscribed=False)
        t.join(60)
        pub.wait_acked()
        got = wait_stored(store, expected)
    finally:
        pub.close()
        proc.stop()
    assert 0 < partial < len(expected), "the kill should land mid-stream"
    assert got == by_key(expected)
    store.close()


def test_broker_sigkilled_mid_stream_keeps_every_acknowledged_reading(
    fresh_mosquitto: Callable[..., Mosquitto], influxd: Influxd, tmp_path: Path
) -> None:
    broker = fresh_mosquitto()
    settings = make_settings(broker.port, f"influxdb://127.0.0.1:{influxd.port}/fbroker", tmp_path / "spool",
                             client_id="f-broker", topic="fbroker/{device}/{quantity}")
    store = open_store(settings.store)
    ing = Ingester(settings, store, Metrics())
    ing.start()
    assert ing.source is not None and ing.source.subscribed.wait(10)
    time.sleep(1.5)  # the broker's autosave (1 s) has written our session and subscription
    pub = Publisher(broker.port, client_id="f-broker-pub")
    expected = readings(8_000, 80)
    t = run_in_thread(lambda: pub.publish(expected, rate=2000, topic="fbroker/{d}/{q}"))
    try:
        time.sleep(1.5)
        broker.kill(signal.SIGKILL)
        time.sleep(1.0)
        broker.start()
        t.join(60)
        pub.wait_acked(timeout=90)
        acked = pub.acked()
        got = wait_stored(store, acked)
    finally:
        pub.close()
        ing.stop()
    assert len(acked) == len(expected)  # the publisher retried until the broker took all
    assert got == by_key(acked)  # each acknowledged reading stored exactly once
    store.close()


def test_spool_full_stops_acknowledging_and_recovers(
    mosquitto: Mosquitto, fresh_influxd: Callable[..., Influxd], tmp_path: Path
) -> None:
    influxd = fresh_influxd()
    settings = make_settings(mosquitto.port, f"influxdb://127.0.0.1:{influxd.port}/sensorcast", tmp_path / "spool",
                             client_id="f-spool-full", topic="ffull/{device}/{quantity}",
                             batch_size=200, queue_max=500)
    settings.store.spool_max_bytes = 20_000  # ~4 batches of 200 readings
    store = open_store(settings.store)
    ing = Ingester(settings, store, Metrics())
    ing.start()
    assert ing.source is not None and ing.source.subscribed.wait(10)
    influxd.kill(signal.SIGKILL)
    pub = Publisher(mosquitto.port, client_id="f-spool-full-pub")
    expected = readings(4_000, 40)
    try:
        pub.publish(expected, topic="ffull/{d}/{q}")
        pub.wait_acked()  # the broker took them all; it holds what we do not acknowledge
        deadline = time.monotonic() + 20
        while not ing.status().spool_full and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        status = ing.status()
        assert status.spool_full
        assert ing.metrics.spool_full._value.get() == 1
        acked = ing.source.acked
        assert acked < len(expected), "must not acknowledge what could not be made durable"
        assert status.spool_readings >= acked  # every acknowledged message is in the spool
        influxd.start()
        got = wait_stored(store, expected, timeout=90)
        deadline = time.monotonic() + 20
        while ing.status().spool_readings and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        pub.close()
        ing.stop()
    assert got == by_key(expected)
    assert ing.metrics.spool_full._value.get() == 0
    store.close()
