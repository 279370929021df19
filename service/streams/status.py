"""What the engine reports about streams and models (frozen records for the API layer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from service.records import Forecast

StreamState = Literal["warming", "ok", "firing", "no_model"]  # no_model: readings come, no model serves them


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
    model: str | None  # None: status "no_model"
    model_version: str | None
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
    # A predicted breach of an operating limit (predicted_breach firing), else all None:
    # seconds from last_ts_ns to the first step beyond the limit with probability >= p,
    # that probability, the limit, its side ("upper"/"lower"), and the feature (the output
    # feature of a multivariate stream, the quantity of a single one).
    breach_eta_s: float | None = None
    breach_probability: float | None = None
    breach_limit: float | None = None
    breach_side: str | None = None
    breach_feature: str | None = None
    held_by: str | None = None  # the data-quality check holding the stream's ML alerts back
    checks_firing: list[str] = field(default_factory=list)  # every check firing on the stream
    kept_out: int = 0  # consecutive readings kept out of the model state (an anomaly under way)


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
    grid: tuple[int, int] | None = None  # (H, W) of a sensor grid model (Manifest.grid)
