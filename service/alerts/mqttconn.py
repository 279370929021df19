"""Build a paho client from ``MqttSettings``: URL, credentials, TLS, reconnect backoff."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from service.config import MqttSettings, read_secret
from service.errors import ConfigError


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def parse_url(settings: MqttSettings) -> BrokerAddress:
    """``mqtt://[user[:pass]@]host:port`` or ``mqtts://``; the password file wins."""
    parts = urlsplit(settings.url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"mqtt.url: scheme {parts.scheme!r} unknown (expected mqtt or mqtts)")
    if not parts.hostname:
        raise ConfigError("mqtt.url: no host given (expected mqtt://host:port)")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as e:
        raise ConfigError(f"mqtt.url: bad port ({e})") from e
    username = unquote(parts.username) if parts.username else None
    password = read_secret(None, settings.password_file)
    if password is None and parts.password:
        password = unquote(parts.password)
    return BrokerAddress(parts.hostname, port, tls, username, password)


def make_client(settings: MqttSettings, client_id: str) -> tuple[mqtt.Client, BrokerAddress]:
    """A configured (not yet connected) client and where it should connect."""
    addr = parse_url(settings)
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    if addr.username is not None:
        client.username_pw_set(addr.username, addr.password)
    if addr.tls:
        ctx = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
        if settings.cert_file is not None:
            ctx.load_cert_chain(
                str(settings.cert_file), str(settings.key_file) if settings.key_file else None
            )
        if settings.tls_insecure:
            ctx.check_hostname = False
        client.tls_set_context(ctx)
    client.reconnect_delay_set(
        min_delay=max(1, int(settings.reconnect_min_s)), max_delay=max(1, int(settings.reconnect_max_s))
    )
    return client, addr
