"""Build a paho client from ``MqttSettings``: URL, credentials, TLS, reconnect backoff."""

from __future__ import annotations

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from service.config import MqttSettings
from service.mqttaddr import BrokerAddress, parse_broker_url, tls_context


def make_client(settings: MqttSettings, client_id: str) -> tuple[mqtt.Client, BrokerAddress]:
    """A configured (not yet connected) client and where it should connect."""
    addr = parse_broker_url(settings)
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    if addr.username is not None:
        client.username_pw_set(addr.username, addr.password)
    if addr.tls:
        client.tls_set_context(tls_context(settings))
    client.reconnect_delay_set(
        min_delay=max(1, int(settings.reconnect_min_s)), max_delay=max(1, int(settings.reconnect_max_s))
    )
    return client, addr
