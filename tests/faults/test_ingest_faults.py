"""Ingest under faults, on real servers: nothing acknowledged is ever lost or doubled.

Each test owns the server it kills (``fresh_*`` fixtures).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import MQTTErrorCode

from service.api.routes.health import readiness
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.store import open_store
from service.wiring import build_ingester
from tests.integration.ingest_helpers import (
    IngestProcess,
    Publisher,
    acked,
    make_settings,
    payload,
    readings,
    run_in_thread,
    stored,
    wait_stored,
)
from tests.waiting import poll
from tools.localservers import Influxd, Mosquitto

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
    ing = build_ingester(settings, store, Metrics())
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
    ing = build_ingester(settings, store, Metrics())
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
    ing = build_ingester(settings, store, Metrics())
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


def _publish_raw(pub: Publisher, messages: list[tuple[str, bytes]]) -> list[paho.MQTTMessageInfo]:
    infos = []
    for topic, body in messages:
        info = pub.client.publish(topic, body, qos=1)
        assert info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS, info.rc
        infos.append(info)
    return infos


def test_exception_while_handling_a_message_is_refused_acknowledged_and_intake_goes_on(
    mosquitto: Mosquitto, influxd: Influxd, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever raises inside ``_on_message`` (here: the decoder, and the refusal reporter)
    costs that one message, counted as ``internal``; paho's thread lives, every good reading
    around it is stored once, every message is acknowledged, and a restart replays nothing."""
    url = f"influxdb://127.0.0.1:{influxd.port}/fraise"
    settings = make_settings(mosquitto.port, url, tmp_path / "spool", client_id="f-raise",
                             topic="fraise/{device}/{quantity}")
    store = open_store(settings.store)
    ing = build_ingester(settings, store, Metrics())
    real_decode, real_report = ing.decoder.decode, ing.reporter.report

    def decode(topic: str, payload: bytes, received_ns: int):  # type: ignore[no-untyped-def]
        if payload.startswith(b"decode-boom"):
            raise OverflowError("int too large to convert to float")  # what the poison raised
        return real_decode(topic, payload, received_ns)

    def report(source: str, topic: str, payload: bytes, refusals: object) -> None:
        if payload.startswith(b"report-boom"):
            raise RuntimeError("reporter bug")
        real_report(source, topic, payload, refusals)  # type: ignore[arg-type]

    ing.decoder.decode = decode  # type: ignore[method-assign]
    ing.reporter.report = report  # type: ignore[method-assign]
    ing.start()
    assert ing.source is not None and ing.source.subscribed.wait(10)
    good = readings(2_000, 20)
    messages: list[tuple[str, bytes]] = []
    for k, r in enumerate(good):
        messages.append((f"fraise/{r.stream.device}/{r.stream.quantity}", payload(r)))
        if k % 100 == 0:  # the first right after the first good reading, as in the issue
            messages.append(("fraise/bad/temp", b"decode-boom %d" % k))
            messages.append(("fraise/bad/temp", b"report-boom %d" % k))  # refused (not a number), then raises
    pub = Publisher(mosquitto.port, client_id="f-raise-pub")
    try:
        infos = _publish_raw(pub, messages)
        assert poll(lambda: all(acked(i) for i in infos), 60), "the broker did not take every message"
        got = wait_stored(store, good)
        n_bad = len(messages) - len(good)
        internal = ing.metrics.readings_refused.labels("internal")
        assert poll(lambda: internal._value.get() == n_bad, 10), internal._value.get()
        assert poll(lambda: ing.source is not None and ing.source.acked == len(messages), 10), ing.source.acked
        assert ing.source.loop_alive() and ing.status().broker_connected
    finally:
        pub.close()
        ing.stop()
    assert got == by_key(good)  # every good reading, once, values exact
    assert "refused (internal) from mqtt topic 'fraise/bad/temp': OverflowError" in caplog.text
    assert "payload b'decode-boom 0'" in caplog.text
    # The same session again: the broker has nothing left to redeliver.
    again = build_ingester(settings, store, Metrics())
    again.start()
    try:
        assert again.source is not None and again.source.subscribed.wait(10)
        time.sleep(2)
        refused = sum(s.value for m in again.metrics.readings_refused.collect() for s in m.samples
                      if s.name.endswith("_total"))
        assert refused == 0 and again.source.acked == 0
    finally:
        again.stop()
    store.close()


def test_lost_broker_session_is_a_warning_a_counter_and_a_readyz_detail(
    fresh_mosquitto: Callable[..., Mosquitto], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # autosave far away: a SIGKILL loses everything the broker had not saved, our session too.
    broker = fresh_mosquitto(autosave_s=3600)
    settings = make_settings(broker.port, f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "spool",
                             client_id="f-session", topic="fsess/{device}/{quantity}")
    metrics = Metrics()
    store = open_store(settings.store)
    ing = build_ingester(settings, store, metrics)
    pipe = Pipeline(settings, metrics, store=store, ingester=ing, decoder=ing.decoder)
    lost = metrics.mqtt_sessions_lost
    pipe.start()
    try:
        assert ing.source is not None and ing.source.subscribed.wait(10)
        # SIGKILL before any autosave: the restarted broker has never heard of us.
        broker.kill(signal.SIGKILL)
        broker.start()
        assert poll(lambda: lost._value.get() == 1, 15), caplog.text[-2000:]
        assert ing.source.subscribed.wait(10)
        warnings = [r for r in caplog.records if r.levelname == "WARNING" and "persistent session" in r.getMessage()]
        assert len(warnings) == 1 and "may be gone" in warnings[0].getMessage()
        check = readiness(pipe)["broker"]
        assert check.ok  # a detail, not a failure: intake works again
        assert "lost our persistent session 1 time(s)" in check.detail and "persistence" in check.detail
        # A clean restart saves the broker's state: the (new) session is still there, no new loss.
        broker.kill(signal.SIGTERM)
        broker.start()
        assert poll(lambda: caplog.text.count("session present: True") == 1, 15), caplog.text[-2000:]
        assert ing.source.subscribed.wait(10)
        assert lost._value.get() == 1
        assert b"sensorcast_mqtt_sessions_lost_total 1.0" in metrics.render()
    finally:
        pipe.stop()
