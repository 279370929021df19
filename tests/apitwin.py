"""An in-memory twin of the engine's read side, for unit tests of the API layer only.

It answers like ``service.streams.engine.Engine`` (the interface in ``service.pipeline.
EngineLike``) from fixed data, so route logic (validation, status codes, auth, schemas)
can be tested without models; the serving integration tests use the real engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from service.config import AnomalySettings, StreamRules
from service.errors import ModelError
from service.records import Alert, Forecast, Reading
from service.runtime.manifest import Manifest
from service.streams.rules import ResolvedRules, resolve
from service.streams.status import ForecastLookup, ModelInfo


@dataclass
class TwinStatus:
    id: str
    device: str
    quantity: str
    model: str | None
    model_version: str | None
    status: str
    warm_have: int
    warm_need: int
    last_ts_ns: int | None
    last_value: float | None
    score: float | None
    expected: float | None
    lower: float | None
    upper: float | None
    checks_firing: list[str] = field(default_factory=list)  # as StreamStatus: /metrics reads it


def twin_manifest(name: str = "twin", version: str = "1") -> Manifest:
    return Manifest(
        name=name, version=version, kind="step", cell="gru", layers=1, hidden=4, state_size=4,
        features=["value"], output_features=["value"], cadence_s=60.0, horizon=3, warmup_steps=5,
        probabilistic=True, data={"source": "twin", "rows": 0},  # type: ignore[arg-type]
        sha256="0" * 64, created_at=datetime(2024, 1, 1, tzinfo=UTC),
    )


@dataclass
class TwinRegistry:
    errors: dict[str, str] = field(default_factory=dict)  # what the last reload refused


@dataclass
class TwinEngine:
    statuses: dict[str, TwinStatus] = field(default_factory=dict)
    forecasts: dict[str, Forecast] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)
    manifests: list[Manifest] = field(default_factory=lambda: [twin_manifest()])
    accepted: list[Reading] = field(default_factory=list)
    reloads: int = 0
    registry: TwinRegistry = field(default_factory=lambda: TwinRegistry())
    busy: bool = False  # lookup_forecast answers "a write overlapped": the route must take the locked path
    own_rules: dict[str, StreamRules | None] = field(default_factory=dict)
    refuse_rules: str | None = None  # set_rules raises ValueError with this text (rules the model cannot take)

    def accept(self, readings: Sequence[Reading]) -> None:
        self.accepted.extend(readings)

    def tick(self, now_ns: int | None = None) -> int:
        return 0

    def streams(self) -> list[TwinStatus]:
        return list(self.statuses.values())

    def streams_page(self, limit: int, after: str | None = None, status: str | None = None) -> tuple[list[TwinStatus], str | None]:
        rows = [s for _, s in sorted(self.statuses.items()) if (after is None or s.id > after)
                and (status is None or s.status == status)]
        return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)

    def stream(self, stream_id: str) -> TwinStatus | None:
        return self.statuses.get(stream_id)

    def forecast(self, stream_id: str) -> Forecast | None:
        return self.forecasts.get(stream_id)

    def lookup_forecast(self, stream_id: str) -> ForecastLookup | None:
        if self.busy:
            return None
        status = self.statuses.get(stream_id)
        if status is None:
            return ForecastLookup(known=False)
        return ForecastLookup(known=True, forecast=self.forecasts.get(stream_id),
                              warm_have=status.warm_have, warm_need=status.warm_need)

    def predict(self, model: str, version: str | None, values: Any, timestamps_ns: Any, cadence_s: float | None = None) -> Forecast:
        m = next((m for m in self.manifests if m.name == model and version in (None, m.version)), None)
        if m is None:
            raise ModelError(f"unknown model {model!r}")
        x = np.array([[np.nan if v is None else v for v in row] for row in values], np.float32)  # (T, F)
        if x.shape[1] != len(m.features):
            raise ValueError(f"values have {x.shape[1]} features, model {model!r} expects {len(m.features)}")
        seen = x[~np.isnan(x[:, 0]), 0]
        last = float(seen[-1]) if seen.size else 0.0
        return Forecast(
            key=None, ts_ns=int(timestamps_ns[-1]), cadence_s=cadence_s or m.cadence_s,
            features=tuple(m.output_features), mean=tuple((last,) for _ in range(m.horizon)),
            scale=tuple((1.0,) for _ in range(m.horizon)), model=m.name, model_version=m.version,
        )

    def models(self) -> list[ModelInfo]:
        return [
            ModelInfo(
                name=m.name, version=m.version, kind=m.kind, cell=m.cell, features=tuple(m.features),
                output_features=tuple(m.output_features), time_features=tuple(m.time_features),
                cadence_s=m.cadence_s, horizon=m.horizon, warmup_steps=m.warmup_steps,
                probabilistic=m.probabilistic, default_threshold=m.default_threshold, sha256=m.sha256,
                created_at=m.created_at.isoformat(), streams=0, metrics=m.metrics,
                grid=(m.grid[0], m.grid[1]) if m.grid else None,
            )
            for m in self.manifests
        ]

    def reload_models(self) -> dict[str, Any]:
        self.reloads += 1
        return {"loaded": [], "unchanged": [f"{m.name}/{m.version}" for m in self.manifests], "errors": {"bad/2": "SHA-256 mismatch"}}

    def recent_alerts(self, limit: int = 100, stream: str | None = None, state: str | None = None) -> list[Alert]:
        out = [a for a in self.alerts if (stream is None or a.stream_id == stream) and (state is None or a.state == state)]
        return out[-limit:]

    def forget_stream(self, stream_id: str) -> bool:
        return self.statuses.pop(stream_id, None) is not None

    def unserved(self) -> list[str]:
        return []

    def set_rules(self, stream_id: str, rules: StreamRules | None) -> None:
        if self.refuse_rules is not None:
            raise ValueError(self.refuse_rules)
        self.own_rules[stream_id] = rules

    def rules_of(self, stream_id: str) -> tuple[StreamRules | None, ResolvedRules] | None:
        if stream_id not in self.statuses:
            return None
        own = self.own_rules.get(stream_id)
        return own, resolve(AnomalySettings(), None, own, ["value"], 60.0)

    def checkpoint(self) -> None: ...
    def restore(self) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...
