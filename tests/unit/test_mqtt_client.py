"""One ``make_client`` for every MQTT client: the same backoff and queue limit for each use."""

from __future__ import annotations

import paho.mqtt.client as paho
import pytest

from service.config import MqttSettings
from service.mqtt import MAX_QUEUED, connect_properties, make_client
from service.mqtt.leanclient import LeanClient


@pytest.mark.parametrize(("low", "high", "want"), [(0.5, 30.0, (1, 30)), (1.9, 4.4, (2, 4)), (3.0, 0.2, (3, 1))])
def test_every_use_rounds_reconnect_delays_alike_and_limits_the_queue(
    low: float, high: float, want: tuple[int, int]
) -> None:
    settings = MqttSettings(reconnect_min_s=low, reconnect_max_s=high)  # type: ignore[call-arg]
    uses = {
        "alerts": make_client(settings, "a")[0],
        "ingest": make_client(settings, "i", protocol="5", persistent=True, manual_ack=True, lean=True)[0],
        "inference": make_client(settings, "n", protocol="3.1.1", lean=True)[0],
    }
    for use, client in uses.items():
        # Nearest whole second, at least 1 (the alert client used to truncate: 1.9 s -> 1 s).
        assert (client._reconnect_min_delay, client._reconnect_max_delay) == want, use
        assert client.max_queued_messages == MAX_QUEUED, use


def test_what_differs_by_use_is_a_parameter() -> None:
    settings = MqttSettings(url="mqtt://u:pw@broker:1884", session_expiry_s=60)  # type: ignore[call-arg]
    alerts, addr = make_client(settings, "alerts")
    assert type(alerts) is paho.Client and alerts.protocol == paho.MQTTv311 and alerts._clean_session
    assert (addr.host, addr.port, addr.username, addr.password) == ("broker", 1884, "u", "pw")
    assert alerts._username == b"u" and alerts._password == b"pw"
    ingest, _ = make_client(settings, "ingest", protocol="5", persistent=True, manual_ack=True, lean=True)
    assert isinstance(ingest, LeanClient) and ingest.protocol == paho.MQTTv5 and ingest._manual_ack
    kept, _ = make_client(settings, "kept", persistent=True)  # 3.1.1: clean_session=False keeps the queue
    assert not kept._clean_session
    assert connect_properties(settings, persistent=True).SessionExpiryInterval == 60
    assert connect_properties(settings, persistent=False).SessionExpiryInterval == 0
