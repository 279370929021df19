"""Optional API keys with two scopes, sent in the ``X-API-Key`` header.

- ``api.api_key_file`` set: mutating routes need the write key.
- ``api.read_key_file`` set: reading routes need the read key or the write key (write
  includes read). Set alone (no write key), mutating routes need the read key too: a
  read key never leaves writes open.
No file at all leaves every route open, which ``check_exposure`` refuses on a
non-loopback bind address unless ``api.allow_open``. Keys are compared with
``hmac.compare_digest`` and never logged or echoed; errors say only which scope was
missing.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.config import ApiSettings, read_secret
from service.errors import ConfigError

Scope = Literal["read", "write"]


class AuthError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ApiKeys:
    write: bytes | None = None
    read: bytes | None = None

    @classmethod
    def from_settings(cls, api: ApiSettings) -> ApiKeys:
        return cls(write=_load(api.api_key_file, "api_key_file"), read=_load(api.read_key_file, "read_key_file"))

    @property
    def enabled(self) -> bool:
        return self.write is not None or self.read is not None

    def open_scopes(self) -> list[Scope]:
        """Scopes whose routes anyone may call."""
        scopes: tuple[Scope, ...] = ("read", "write")
        return [s for s in scopes if self.needed(s) is None]

    def needed(self, scope: Scope) -> bytes | None:
        """The key that guards ``scope`` (None: open); only a read key guards writes too."""
        if scope == "write":
            return self.write if self.write is not None else self.read
        return self.read

    def check(self, presented: str | None, scope: Scope) -> None:
        """Raise ``AuthError`` (401 no/unknown key, 403 key lacks scope) unless allowed."""
        if self.needed(scope) is None:
            return
        if not presented:
            raise AuthError(401, f"this route needs an API key with {scope} scope in the X-API-Key header")
        given = presented.encode()
        if self.write is not None and hmac.compare_digest(given, self.write):
            return
        if self.read is not None and hmac.compare_digest(given, self.read):
            if scope == "read" or self.write is None:
                return
            raise AuthError(403, "the API key has read scope; this route needs write scope")
        raise AuthError(401, "the API key is not valid")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the API on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_exposure(api: ApiSettings, keys: ApiKeys) -> None:
    """Refuse to serve open write routes beyond loopback unless ``api.allow_open``."""
    if "write" in keys.open_scopes() and not is_loopback(api.host) and not api.allow_open:
        raise ConfigError(
            f"the API would bind {api.host!r} (not loopback) with no API key, leaving POST /v1/readings, "
            "POST /v1/models/reload and PUT /v1/streams/{id}/settings open to anyone who can reach it. Set SENSORCAST_API__API_KEY_FILE (and "
            "SENSORCAST_API__READ_KEY_FILE) to key files, bind 127.0.0.1 behind a proxy, or set "
            "SENSORCAST_API__ALLOW_OPEN=true if this network is trusted"
        )


def _load(file: Path | None, name: str) -> bytes | None:
    if file is None:
        return None
    try:
        key = read_secret(None, file)
    except OSError as e:
        raise ConfigError(f"api.{name}: cannot read the key file {file} ({e.strerror})") from e
    if not key:
        raise ConfigError(f"api.{name}: the key file {file} is empty")
    return key.encode()
