"""``make_client``: the one way a sensorcast process builds a paho client.

Every client (the ingester's subscription, an inference process's own one, the alert
publisher's two, the simulator's) gets the same URL, credentials, TLS, reconnect backoff
and queue limit from ``MqttSettings``; only what differs by use is a parameter:

* ``protocol``: the ingester follows ``mqtt.protocol``; every other client speaks 3.1.1
  (the alert publisher needs no MQTT 5 feature, and 3.1.1 works with every broker);
* ``persistent``: a session the broker keeps (and queues for) while we are away, with
  ``connect_properties`` giving its MQTT 5 expiry; otherwise a clean session;
* ``manual_ack``: acknowledge a message only once it is durable (the ingester);
* ``lean``: the cheaper receive path of ``leanclient`` (the ingest hot path).

Reconnect delays: paho counts whole seconds, so ``mqtt.reconnect_min_s`` and
``reconnect_max_s`` are rounded to the nearest second, at least 1 s (the ingester's
rule; the alert client used to truncate, so 1.9 s became 1 s).
"""

from __future__ import annotations

from typing import Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from service.config import MqttSettings
from service.mqtt.address import BrokerAddress, parse_broker_url, tls_context
from service.mqtt.leanclient import client_class

# QoS 1 publishes paho holds while disconnected (dead letters, alerts): past this it
# refuses with MQTT_ERR_QUEUE_SIZE instead of growing without bound. The alert publisher
# hands paho at most as many (its _MAX_HANDED), so it never meets the limit.
MAX_QUEUED = 10_000


def make_client(
    settings: MqttSettings,
    client_id: str,
    *,
    protocol: Literal["5", "3.1.1"] = "3.1.1",
    persistent: bool = False,
    manual_ack: bool = False,
    lean: bool = False,
) -> tuple[paho.Client, BrokerAddress]:
    """A configured (not yet connected) client and where it should connect."""
    addr = parse_broker_url(settings)
    v5 = protocol == "5"
    cls = client_class() if lean else paho.Client
    client = cls(
        CallbackAPIVersion.VERSION2, client_id=client_id, manual_ack=manual_ack,
        # 3.1.1 has no session expiry: clean_session=False keeps the session (and queue).
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311, clean_session=None if v5 else not persistent,
    )
    if addr.username is not None:
        client.username_pw_set(addr.username, addr.password)
    if addr.tls:
        client.tls_set_context(tls_context(settings))
    client.reconnect_delay_set(min_delay=_whole_s(settings.reconnect_min_s), max_delay=_whole_s(settings.reconnect_max_s))
    client.max_queued_messages_set(MAX_QUEUED)
    return client, addr


def connect_properties(settings: MqttSettings, persistent: bool) -> Properties:
    """MQTT 5 CONNECT properties: how long the broker keeps the session, how much it may send unacked."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = settings.session_expiry_s if persistent else 0
    props.ReceiveMaximum = max(1, min(settings.receive_maximum, 65535))
    return props


def _whole_s(seconds: float) -> int:
    return max(1, round(seconds))
