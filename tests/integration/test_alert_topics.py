"""Alert topics against a real mosquitto: one distinct, deliverable topic per stream.

Stream names come from payloads, so they may hold what MQTT gives meaning to (``/``,
``+``, ``#``) and what mosquitto refuses in a topic outright (C1 control characters,
Unicode non-characters): it drops the connection, and an alert in the outbox would be
re-sent, and the connection dropped, forever. Escaped, every alert arrives on its own
topic and the publisher's outbox empties.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from service.alerts.payload import topic_for
from service.alerts.publisher import AlertPublisher
from service.config import AlertsSettings, MqttSettings
from service.records import Alert, StreamKey
from tests.mqttwatch import Watcher
from tools.localservers import Mosquitto

pytestmark = pytest.mark.integration

KEYS = [
    StreamKey("a+b", "t"),
    StreamKey("a_b", "t"),  # used to share a topic with a+b, a#b and a/b
    StreamKey("a#b", "t"),
    StreamKey("a/b", "t"),
    StreamKey("pump-1", "temperature"),
    StreamKey("pump-1", "temperature", (("site", "hq"),)),  # used to share pump-1/temperature's topics
    StreamKey("pump-1", "temperature;site=hq"),
    StreamKey("ctl\x85", "t"),  # C1 control: mosquitto refuses it in a topic
    StreamKey("nonchar\ufffe", "t"),  # Unicode non-character: refused too
]


def _alert(key: StreamKey, i: int) -> Alert:
    return Alert(
        key=key, quantity=key.quantity, state="firing",
        ts_ns=1_700_000_000_000_000_000 + i, value=90.0, expected=20.0, lower=18.0, upper=22.0,
        score=12.5, model="demo", model_version="1", warm=True,
    )


def test_every_stream_gets_its_own_deliverable_topic(fresh_mosquitto: Callable[..., Mosquitto], tmp_path: Path) -> None:
    mosquitto = fresh_mosquitto()  # its own broker: the retained states must not reach other tests
    watch = Watcher(mosquitto.port, "sensorcast/#", client_id="topics-watch")
    pub = AlertPublisher(
        MqttSettings(url=f"mqtt://127.0.0.1:{mosquitto.port}"),  # type: ignore[call-arg]
        AlertsSettings(outbox_dir=tmp_path / "outbox", client_id="topics-alerts"),  # type: ignore[call-arg]
    )
    pub.start()
    try:
        for i, key in enumerate(KEYS):
            pub.publish_alert(_alert(key, i))
        msgs = watch.wait_for(lambda m: len(m) >= 2 * len(KEYS), timeout=15)
        assert pub.connected
        watch.wait_for(lambda m: pub.pending() == 0, timeout=5)
        assert pub.pending() == 0  # the broker took every one: nothing stuck in the outbox
    finally:
        pub.stop()
        watch.close()
    events = {m.json()["stream_id"]: m.topic for m in msgs if m.topic.startswith("sensorcast/alerts/")}
    states = {m.json()["stream_id"]: m.topic for m in msgs if m.topic.startswith("sensorcast/state/")}
    assert set(events) == set(states) == {k.id for k in KEYS}
    assert len(set(events.values())) == len(set(states.values())) == len(KEYS)  # no two streams share a topic
    assert events["pump-1/temperature"] == "sensorcast/alerts/pump-1/temperature"  # ordinary names unchanged
    assert events["pump-1/temperature;site=hq"] == "sensorcast/alerts/pump-1/temperature;site=hq"
    assert events["a+b/t"] == "sensorcast/alerts/a%2Bb/t"
    assert events["ctl%C2%85/t"] == "sensorcast/alerts/ctl%C2%85/t"


def test_the_broker_refuses_the_raw_names(mosquitto: Mosquitto) -> None:
    """The premise: a topic with a C1 control character costs the publisher its connection."""
    gone = threading.Event()
    up = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="raw-topic")
    c.on_connect = lambda *a: up.set()
    c.on_disconnect = lambda *a: gone.set()
    c.connect("127.0.0.1", mosquitto.port)
    c.loop_start()
    try:
        assert up.wait(10)
        c.publish("sensorcast/alerts/ctl\x85/t", b"x", qos=1)
        assert gone.wait(10), "mosquitto kept a client that published a C1 control character in a topic"
        escaped = topic_for("sensorcast/alerts/{device}/{quantity}", "ctl\x85", "t", "")
        assert "\x85" not in escaped
    finally:
        c.disconnect()
        c.loop_stop()
