"""Internal records: frozen, slotted dataclasses that flow through the pipeline.

Pydantic lives only at the edges (settings, API schemas, manifests on disk).
Timestamps are integer nanoseconds since the Unix epoch, UTC: exact, cheap to compare,
and what InfluxDB line protocol speaks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True, order=True)
class StreamKey:
    """Identity of one series: a device's quantity, plus any extra tags (sorted)."""

    device: str
    quantity: str
    tags: tuple[tuple[str, str], ...] = ()

    @property
    def id(self) -> str:
        """Stable text id used in the API and in topics: ``device/quantity[;k=v...]``."""
        base = f"{self.device}/{self.quantity}"
        if not self.tags:
            return base
        return base + "".join(f";{k}={v}" for k, v in self.tags)


@dataclass(frozen=True, slots=True)
class Reading:
    """One measured value of one stream at one instant."""

    stream: StreamKey
    ts_ns: int
    value: float

    @property
    def time(self) -> datetime:
        """The timestamp as an aware UTC datetime (microsecond precision)."""
        return datetime.fromtimestamp(self.ts_ns // 1000 / 1_000_000, tz=UTC)


@dataclass(frozen=True, slots=True)
class Forecast:
    """A forecast for one stream made at ``ts_ns`` for ``horizon`` steps of ``cadence_s``."""

    stream_id: str
    ts_ns: int
    cadence_s: float
    features: tuple[str, ...]
    mean: tuple[tuple[float, ...], ...]  # (H, F_out) raw units
    scale: tuple[tuple[float, ...], ...] | None  # (H, F_out) predicted spread, or None
    model: str
    model_version: str


AlertState = Literal["firing", "resolved"]


@dataclass(frozen=True, slots=True)
class Alert:
    """A state change of a stream's anomaly decision, explained."""

    stream_id: str
    device: str
    quantity: str
    state: AlertState
    ts_ns: int
    value: float
    expected: float
    lower: float
    upper: float
    score: float
    model: str
    model_version: str
    warm: bool
    extra: dict[str, str] = field(default_factory=dict)
