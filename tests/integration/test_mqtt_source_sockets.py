"""The MQTT source closes paho's sockets when it stops (a real mosquitto)."""

from __future__ import annotations

from service.config import IngestSettings, MqttSettings
from service.ingest.decode import Decoder
from service.ingest.mqtt import MqttSource
from service.ingest.refusals import RefusalReporter
from service.metrics import Metrics
from tests.waiting import wait_until
from tools.localservers import Mosquitto


def test_stop_closes_the_socket_and_wake_up_pair(mosquitto: Mosquitto) -> None:
    metrics = Metrics()
    source = MqttSource(
        MqttSettings(url=f"mqtt://127.0.0.1:{mosquitto.port}"), Decoder(IngestSettings()), None,
        RefusalReporter(metrics), qos=1, client_id="sockets-test", metrics=metrics,
    )
    source.start()
    wait_until(source.connected.is_set, timeout=10, what="connected")
    client = source.client
    assert client._sockpairR is not None  # paho's loop made its wake-up pair
    source.stop()
    # Left open, these raised a ResourceWarning (an error in this suite) at a later GC.
    assert client._sockpairR is None and client._sockpairW is None and client._sock is None
