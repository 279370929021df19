"""What the engine reports about streams and models (frozen records for the API layer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.records import Forecast

StreamState = Literal["warming", "ok", "firing"]


@dataclass(frozen=True, slots=True)
class ForecastLookup:
    """A lock-free forecast read: unknown stream, warming (forecast None), or the forecast."""

    known: bool
    forecast: Forecast | None = None
    warm_have: int = 0
    warm_need: int = 0


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """One stream's live state. While ``status == "warming"`` the numbers are not meaningful:
    show "warming up (warm_have / warm_need)" instead."""

    id: str
    device: str
    quantity: str  # "*" for a multivariate (device) stream
    model: str
    model_version: str
    status: StreamState
    warm_have: int
    warm_need: int
    last_ts_ns: int | None  # timestamp of the last fed step (bucket end)
    last_value: float | None
    score: float | None  # anomaly score in [0, 1] of the last fed step; None when not scored
    expected: float | None  # what the model expected for that step
    lower: float | None
    upper: float | None
    feature: str | None = None  # the output feature the numbers refer to (multivariate)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    version: str
    kind: str
    cell: str
    features: tuple[str, ...]
    output_features: tuple[str, ...]
    time_features: tuple[str, ...]
    cadence_s: float
    horizon: int
    warmup_steps: int
    probabilistic: bool
    default_threshold: float
    sha256: str
    created_at: str
    streams: int  # streams this version serves right now
    metrics: dict[str, dict[str, float]]
