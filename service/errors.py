"""The few exceptions sensorcast raises, named for what failed.

    SensorcastError
    ├── ConfigError        a setting is missing or contradictory
    ├── DecodeError        a payload or topic could not be turned into readings
    ├── StoreError         the store refused or could not be reached
    │   └── SpoolFullError the spool has no room: stop acknowledging
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


class SpoolFullError(StoreError):
    """The durable spool is full: nothing more can be made durable right now."""


class ModelError(SensorcastError):
    """A model artefact failed validation (schema, hash, shapes) or could not be loaded."""
