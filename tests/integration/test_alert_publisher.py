"""The alert publisher against a real mosquitto: delivery, retained state, durable outbox."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service.alerts.publisher import AlertPublisher
from service.config import AlertsSettings, MqttSettings
from service.records import Alert, StreamKey
from tests.mqttwatch import Watcher
from tools.localservers import Mosquitto

pytestmark = pytest.mark.integration


def _alert(i: int, state: str = "firing") -> Alert:
    return Alert(
        key=StreamKey("pump-1", "temperature"), quantity="temperature", state=state,  # type: ignore[arg-type]
        ts_ns=1_700_000_000_000_000_000 + i, value=90.0 + i, expected=20.0, lower=18.0, upper=22.0,
        score=12.5, model="demo", model_version="1", warm=True,
    )


def _publisher(port: int, outbox: Path, **kw: object) -> AlertPublisher:
    return AlertPublisher(
        MqttSettings(url=f"mqtt://127.0.0.1:{port}"),  # type: ignore[call-arg]
        AlertsSettings(outbox_dir=outbox, **kw),  # type: ignore[arg-type]
    )


def test_alert_and_retained_state_are_delivered(mosquitto: Mosquitto, tmp_path: Path) -> None:
    watch = Watcher(mosquitto.port, "sensorcast/#")
    pub = _publisher(mosquitto.port, tmp_path / "outbox")
    pub.start()
    try:
        pub.publish_alert(_alert(0))
        msgs = watch.wait_for(lambda m: len(m) >= 2)
        assert sorted(m.topic for m in msgs) == [
            "sensorcast/alerts/pump-1/temperature", "sensorcast/state/pump-1/temperature/anomaly"
        ]
        body = msgs[0].json()
        assert body["state"] == "firing" and body["value"] == 90.0 and body["model"] == "demo"
        assert body["time"] == "2023-11-14T22:13:20.000000Z"
        assert set(body) >= {"stream_id", "expected", "lower", "upper", "score", "warm", "model_version"}
        # The outbox empties once the broker has acknowledged both.
        watch.wait_for(lambda m: pub.pending() == 0, timeout=5)
        assert pub.pending() == 0
    finally:
        pub.stop()
        watch.close()
    # A late subscriber still learns the current state from the retained message.
    late = Watcher(mosquitto.port, "sensorcast/state/pump-1/temperature/anomaly", client_id="late")
    try:
        got = late.wait_for(lambda m: len(m) >= 1, timeout=5)
        assert got and got[0].retain and got[0].json()["state"] == "firing"
    finally:
        late.close()


def test_outbox_survives_broker_outage_and_restart(
    fresh_mosquitto: Callable[..., Mosquitto], tmp_path: Path
) -> None:
    broker = fresh_mosquitto()
    port = broker.port
    broker.kill()  # broker down: alerts must wait in the outbox
    pub = _publisher(port, tmp_path / "outbox", state_topic="")
    pub.start()
    for i in range(5):
        pub.publish_alert(_alert(i))
    assert pub.pending() == 5
    pub.stop(flush_timeout_s=0.2)  # like a crash: nothing acknowledged

    broker.start()  # same port, same data directory
    watch = Watcher(port, "sensorcast/alerts/#")
    pub2 = _publisher(port, tmp_path / "outbox", state_topic="")
    pub2.start()
    try:
        msgs = watch.wait_for(lambda m: len(m) >= 5)
        assert [m.json()["value"] for m in msgs] == [90.0, 91.0, 92.0, 93.0, 94.0]  # in order
        watch.wait_for(lambda m: pub2.pending() == 0, timeout=5)
        assert pub2.pending() == 0
    finally:
        pub2.stop()
        watch.close()


def test_alerts_published_during_an_outage_arrive_after_reconnect(
    fresh_mosquitto: Callable[..., Mosquitto], tmp_path: Path
) -> None:
    broker = fresh_mosquitto()
    pub = _publisher(broker.port, tmp_path / "outbox", state_topic="")
    pub.start()
    try:
        watch = Watcher(broker.port, "sensorcast/alerts/#", client_id="outage-1")
        pub.publish_alert(_alert(0))
        assert len(watch.wait_for(lambda m: len(m) >= 1)) == 1
        watch.close()
        broker.kill()
        for i in (1, 2):
            pub.publish_alert(_alert(i))  # the same publisher, no broker
        assert pub.pending() == 2
        broker.start()
        # The broker's PUBACK is the publisher's whole promise: wait for it (paho's
        # reconnect backoff), then check the outbox is empty.
        deadline = time.monotonic() + 30
        while (pub.published < 3 or pub.pending()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pub.published == 3 and pub.pending() == 0
    finally:
        pub.stop()
