"""Stores for readings (see ``base.Store``) and the durable spool in front of them.

``open_store(settings)`` picks the implementation from one URL:
``influxdb://[user:pass@]host:8086/db``, ``influxdb2://host:8086/bucket?org=...``
(``influxdb2s://`` / ``influxdbs://`` for HTTPS), ``sqlite:///path`` or ``memory://``.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from service.config import StoreSettings, read_secret
from service.errors import ConfigError
from service.store.base import Store

__all__ = ["Store", "open_store"]


def open_store(settings: StoreSettings) -> Store:
    url = urlsplit(settings.url)
    scheme = url.scheme.lower()
    if scheme == "memory":
        from service.store.memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        from service.store.sqlite import SqliteStore

        # sqlite:///rel/path -> rel/path ; sqlite:////abs/path -> /abs/path
        path = unquote(settings.url.split("://", 1)[1][1:])
        if not path:
            raise ConfigError(f"sqlite store URL needs a path, found {settings.url!r}")
        return SqliteStore(path, settings.measurement)
    if scheme in ("influxdb", "influxdbs", "influxdb2", "influxdb2s"):
        http = "https" if scheme.endswith("s") else "http"
        host = url.hostname or "127.0.0.1"
        base = f"{http}://{host}:{url.port or 8086}"
        name = unquote(url.path.lstrip("/"))
        if not name:
            raise ConfigError(f"store URL needs a database/bucket path, found {settings.url!r}")
        if scheme.startswith("influxdb2"):
            from service.store.influx2 import Influx2Store

            org = parse_qs(url.query).get("org", [""])[0]
            token = read_secret(None, settings.token_file) or (unquote(url.password) if url.password else None)
            if not org or not token:
                raise ConfigError("influxdb2 store needs ?org=... and a token (store.token_file)")
            return Influx2Store(base, name, org, token, settings.measurement, settings.timeout_s)
        from service.store.influx1 import Influx1Store

        auth = None
        if url.username:
            pw = read_secret(None, settings.password_file) or unquote(url.password or "")
            auth = (unquote(url.username), pw)
        store = Influx1Store(base, name, settings.measurement, settings.timeout_s, auth=auth)
        store.ensure_database()
        store.downsample_after_s = None if settings.downsample_after_days is None else settings.downsample_after_days * 86_400
        return store
    raise ConfigError(
        f"unknown store URL scheme {url.scheme!r}: expected influxdb://, influxdb2://, sqlite:/// or memory://"
    )
