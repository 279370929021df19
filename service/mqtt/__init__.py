"""MQTT plumbing shared by every client: the broker URL (``address``), the one
``make_client`` (``client``) and the ingester's cheaper receive path (``leanclient``)."""

from service.mqtt.address import BrokerAddress, parse_broker_url, tls_context
from service.mqtt.client import MAX_QUEUED, connect_properties, make_client

__all__ = ["MAX_QUEUED", "BrokerAddress", "connect_properties", "make_client", "parse_broker_url", "tls_context"]
