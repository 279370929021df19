"""The store interface: write a batch, read a range or the last N points, list streams.

Implementations: ``influx1`` (InfluxDB 1.x HTTP API), ``influx2`` (2.x/3.x via
influxdb-client, reads through the InfluxQL compatibility endpoint), ``sqlite``
(embedded default) and ``memory`` (the in-memory twin for unit tests). Writes are
idempotent on (stream, timestamp): a redelivered reading overwrites, never doubles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from service.records import Reading, StreamKey


@runtime_checkable
class Store(Protocol):
    """Where readings live. Every method may raise ``StoreError``."""

    def write(self, readings: Sequence[Reading]) -> None:
        """Durably store ``readings``; same stream and timestamp overwrite.

        Raises ``StoreRejected`` when the store refuses points for good (the writer then
        bisects the batch and dead-letters what it refuses), ``StoreAuthError`` for refused
        credentials and ``StoreError`` for anything transient (the batch is spooled).
        """
        ...

    def read_range(self, stream: StreamKey, start_ns: int, end_ns: int, limit: int | None = None) -> list[Reading]:
        """Readings of ``stream`` with ``start_ns <= ts < end_ns``, oldest first.

        With ``limit``, only the newest ``limit`` readings of that range (still returned
        oldest first); the store applies the limit itself (SQL/InfluxQL ``LIMIT``), so a
        range over years of history costs no more than ``limit`` rows.
        """
        ...

    def read_last(self, stream: StreamKey, n: int) -> list[Reading]:
        """The newest ``n`` readings of ``stream``, oldest first."""
        ...

    def read_last_many(self, streams: Sequence[StreamKey], n: int) -> dict[StreamKey, list[Reading]]:
        """``read_last`` for many streams in as few queries as possible (bulk warm-up)."""
        ...

    def streams(self) -> list[StreamKey]:
        """Every stream that has at least one reading."""
        ...

    def ping(self) -> bool:
        """True when the store answers right now."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
