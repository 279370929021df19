"""The few exceptions sensorcast raises, named for what failed.

    SensorcastError
    ├── ConfigError        a setting is missing or contradictory
    ├── DecodeError        a payload or topic could not be turned into readings
    ├── StoreError         the store failed or could not be reached (transient: retry)
    │   ├── StoreRejected  the store refused points for good (HTTP 4xx): retrying cannot help
    │   ├── StoreAuthError the store refused our credentials (401/403): retried until fixed
    │   ├── SpoolFullError the spool has no room: stop acknowledging
    │   └── SpoolReadError a spooled batch cannot be read right now (EIO, EMFILE): retry later
    └── ModelError         a model artefact is unknown, corrupt or mismatched
"""


class SensorcastError(Exception):
    """Base of every error sensorcast raises on purpose."""


class ConfigError(SensorcastError):
    """A setting is missing, malformed or contradicts another."""


class DecodeError(SensorcastError):
    """A message could not be decoded; ``reason`` is the refusal counter's label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StoreError(SensorcastError):
    """The store failed a read or write (unreachable, refused, timed out)."""


class StoreRejected(StoreError):
    """The store refused (some of) a write for good: the same points would be refused again.

    ``status`` is the HTTP status (0 for stores without one), ``kind`` a short label from a
    fixed set (the metric label: ``retention``, ``series_key_too_long``...), ``detail`` the
    store's own reason (shortened), ``dropped`` how many points it says it dropped, when it
    says (InfluxDB's ``partial write: ... dropped=N``; it has then written the others).
    """

    def __init__(self, status: int, kind: str, detail: str, dropped: int | None = None) -> None:
        super().__init__(f"store refused ({status} {kind}): {detail}")
        self.status = status
        self.kind = kind
        self.detail = detail
        self.dropped = dropped


class StoreAuthError(StoreError):
    """The store refused our credentials (401/403): a configuration error an operator must fix.

    Transient on purpose: the batch is spooled and retried, so nothing is lost meanwhile.
    """


class SpoolFullError(StoreError):
    """The durable spool is full: nothing more can be made durable right now."""


class SpoolReadError(StoreError):
    """A spooled batch could not be read right now (EIO, EMFILE, EACCES): retried later, kept."""


class ModelError(SensorcastError):
    """A model artefact failed validation (schema, hash, shapes) or could not be loaded."""
