"""Where and how to reach the MQTT broker: the URL parser and TLS context every client uses."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from service.config import MqttSettings, read_secret
from service.errors import ConfigError

_TLS_SCHEMES = ("mqtts", "ssl")
_SCHEMES = ("mqtt", "tcp", *_TLS_SCHEMES)


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def parse_broker_url(settings: MqttSettings) -> BrokerAddress:
    """``mqtt://[user[:pass]@]host:port`` or ``mqtts://``; the password file wins over the URL."""
    parts = urlsplit(settings.url)
    if parts.scheme not in _SCHEMES:
        raise ConfigError(f"mqtt.url: scheme {parts.scheme!r} unknown (expected mqtt:// or mqtts://)")
    if not parts.hostname:
        raise ConfigError("mqtt.url: no host given (expected mqtt://host:port)")
    tls = parts.scheme in _TLS_SCHEMES
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as e:
        raise ConfigError(f"mqtt.url: bad port ({e})") from e
    username = unquote(parts.username) if parts.username else None
    password = read_secret(None, settings.password_file)
    if password is None and parts.password:
        password = unquote(parts.password)
    return BrokerAddress(parts.hostname, port, tls, username, password)


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """Verify the broker (CA file or system store); present a client certificate for mTLS."""
    ctx = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    if settings.cert_file is not None:
        ctx.load_cert_chain(str(settings.cert_file), str(settings.key_file) if settings.key_file else None)
    if settings.tls_insecure:
        ctx.check_hostname = False
    return ctx
