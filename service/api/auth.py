"""Optional API keys with two scopes, sent in the ``X-API-Key`` header.

- ``api.api_key_file`` set: mutating routes need the write key.
- ``api.read_key_file`` set: reading routes need the read key or the write key (write
  includes read).
Unset files leave that scope open. Keys are compared with ``hmac.compare_digest`` and
never logged or echoed; errors say only which scope was missing.
"""

from __future__ import annotations

import hmac
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

    def check(self, presented: str | None, scope: Scope) -> None:
        """Raise ``AuthError`` (401 no/unknown key, 403 key lacks scope) unless allowed."""
        needed = self.write if scope == "write" else self.read
        if needed is None:
            return
        if not presented:
            raise AuthError(401, f"this route needs an API key with {scope} scope in the X-API-Key header")
        given = presented.encode()
        if self.write is not None and hmac.compare_digest(given, self.write):
            return
        if self.read is not None and hmac.compare_digest(given, self.read):
            if scope == "read":
                return
            raise AuthError(403, "the API key has read scope; this route needs write scope")
        raise AuthError(401, "the API key is not valid")


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
