"""The ingester on MQTT 3.1.1 (``mqtt.protocol = "3.1.1"``): brokers without MQTT 5.

Against the real mosquitto: the persistent session (clean_session=False) keeps readings
published while the ingester is away. Against the embedded amqtt broker the demo uses
(3.1.1 only): every reading arrives.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from service.metrics import Metrics
from service.store import open_store
from tests.integration.ingest_helpers import Publisher, make_settings, readings, wait_stored
from tools.localservers import Mosquitto, free_port
from tools.sim.broker import EmbeddedBroker

pytestmark = pytest.mark.integration
_n = itertools.count()


def test_persistent_311_session_keeps_readings_while_away(mosquitto: Mosquitto, tmp_path: Path) -> None:
    from service.wiring import build_ingester

    n = next(_n)
    settings = make_settings(mosquitto.port, f"sqlite:///{tmp_path}/a.db", tmp_path / "spool",
                             client_id=f"it311-{n}", topic=f"v311n{n}/{{device}}/{{quantity}}")
    settings.mqtt.protocol = "3.1.1"
    store = open_store(settings.store)
    ing = build_ingester(settings, store, Metrics(), sinks=[])
    ing.start()
    assert ing.source is not None and ing.source.subscribed.wait(10)
    ing.stop()  # away: the broker queues for the persistent session
    pub = Publisher(mosquitto.port, client_id=f"it311-pub-{n}")
    try:
        expected = readings(500, 5)
        pub.publish(expected, topic=f"v311n{n}/{{d}}/{{q}}")
        pub.wait_acked()
    finally:
        pub.close()
    ing = build_ingester(settings, store, Metrics(), sinks=[])
    ing.start()
    try:
        got = wait_stored(store, expected, timeout=30)
    finally:
        ing.stop()
        store.close()
    assert got == sorted(expected, key=lambda r: (r.stream, r.ts_ns))


def test_ingester_on_the_embedded_amqtt_broker(tmp_path: Path) -> None:
    from service.wiring import build_ingester

    with EmbeddedBroker(port=free_port()) as broker:
        settings = make_settings(broker.port, f"sqlite:///{tmp_path}/b.db", tmp_path / "spool", client_id="it-amqtt")
        settings.mqtt.protocol = "3.1.1"
        store = open_store(settings.store)
        sunk: list[object] = []
        ing = build_ingester(settings, store, Metrics(), sinks=[sunk.extend])
        ing.start()
        assert ing.source is not None and ing.source.subscribed.wait(10)
        pub = Publisher(broker.port, client_id="it-amqtt-pub")
        try:
            expected = readings(300, 3)
            pub.publish(expected)
            pub.wait_acked()
            got = wait_stored(store, expected, timeout=30)
        finally:
            pub.close()
            ing.stop()
            store.close()
    assert got == sorted(expected, key=lambda r: (r.stream, r.ts_ns))
    assert len(sunk) == 300
