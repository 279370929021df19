"""Pydantic models of the REST API (the edge): requests, responses and their examples.

Internal records stay dataclasses; ``from_*`` helpers convert at the boundary. Floats
that are not finite (a NaN value, a missing score) are sent as ``null``: JSON has no NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.records import Alert, Forecast
from service.store.alertrows import HistoryRow
from service.units import UnitBook

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
MAX_PREDICT_STEPS = 100_000  # what parsing accepts; api.predict_max_steps (<= this) is the real cap
MAX_MESSAGES = 10_000
LIST_DEFAULT = 1_000  # GET /v1/streams page size when none is asked for
LIST_MAX = 10_000  # and the largest one (a page of StreamOut is ~400 bytes per stream)


def ts_to_dt(ts_ns: int) -> datetime:
    return datetime.fromtimestamp(ts_ns // 1000 / 1_000_000, tz=UTC)


def finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


class ErrorOut(BaseModel):
    detail: Any = Field(description="What was wrong: a message, or a list of validation errors.")


# -- streams ------------------------------------------------------------------------
class WarmUp(BaseModel):
    have: int = Field(description="Steps seen since the stream (re)started.")
    need: int = Field(description="Steps the model needs before forecasts count.")
    message: str = Field(examples=["warming up (12 / 96)"])


class BreachOut(BaseModel):
    eta_s: float = Field(description="Seconds from last_time to the first forecast step beyond the limit with at "
                         "least the stream's breach probability.", examples=[120.0])
    time: datetime | None = Field(description="last_time + eta_s: when the crossing is predicted.")
    probability: float = Field(description="Probability of being beyond the limit at that step.", examples=[0.93])
    limit: float | None = Field(description="The operating limit (raw units).", examples=[80.0])
    side: Literal["upper", "lower"] | None = Field(examples=["upper"])
    feature: str | None = Field(description="The feature predicted to cross (a multivariate stream's output feature).")


class StreamOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str = Field(examples=["pump-1/temperature"])
    device: str = Field(examples=["pump-1"])
    quantity: str = Field(examples=["temperature"], description='"*" for a multivariate (device) stream.')
    feature: str | None = Field(None, description="Output feature the numbers refer to (multivariate streams).")
    model: str | None = Field(examples=["demo"])
    model_version: str | None = Field(examples=["1"])
    status: Literal["warming", "ok", "firing", "no_model"] = Field(
        description="no_model: readings come but no model serves the stream (warm_up says 'no model matches')."
    )
    warm_up: WarmUp
    last_time: datetime | None = Field(description="Time of the last step fed to the model.")
    last_value: float | None
    score: float | None = Field(description="Anomaly score of the last step (in [0, 1]; null when not scored).")
    expected: float | None = Field(description="The value forecast one step earlier for the last step.")
    lower: float | None
    upper: float | None
    predicted_breach: BreachOut | None = Field(
        None, description="An operating limit the forecast is predicted to cross (predicted_breach firing); null: none."
    )
    checks_firing: list[str] = Field(
        default_factory=list, description="Checks firing on the stream: anomaly, stuck, silent, out_of_range, "
        "rate_of_change, predicted_breach.", examples=[["predicted_breach"]],
    )
    held_by: str | None = Field(None, description="The data-quality check holding the stream's ML alerts back.")
    unit: str | None = Field(
        None, examples=["°C"], description="Unit of the values (of `feature` for a multivariate stream): the stream's "
        "settings, else its binding's rules, else the latest its readings gave (payload `unit`, topic `{unit}`).",
    )
    units: dict[str, str] | None = Field(
        None, examples=[{"temperature": "°C", "pressure": "bar"}],
        description="A multivariate stream's unit per feature (those that have one); null for a single stream.",
    )
    kept_out: int = Field(
        0, description="Consecutive readings kept out of the model state (fed its forecast instead): an anomaly under "
        "way. At anomaly.accept_after_steps the new level is accepted.",
    )
    silenced_until: datetime | None = Field(
        None, description="The stream's alerts are recorded but not notified until then (PUT /v1/streams/{id}/silence); "
        "null: not silenced.",
    )

    @classmethod
    def from_status(cls, s: Any) -> StreamOut:
        have, need = int(s.warm_have), int(s.warm_need)
        message = "ready" if have >= need else f"warming up ({have} / {need})"
        if s.status == "no_model":
            message = "no model matches"  # service.streams.binding.NO_MODEL
        last_ts = getattr(s, "last_ts_ns", None)
        return cls(
            id=s.id, device=s.device, quantity=s.quantity, feature=getattr(s, "feature", None), model=s.model, model_version=s.model_version,
            status=s.status, warm_up=WarmUp(have=have, need=need, message=message),
            last_time=ts_to_dt(last_ts) if last_ts is not None else None,
            last_value=finite(s.last_value), score=finite(s.score), expected=finite(s.expected),
            lower=finite(s.lower), upper=finite(s.upper), predicted_breach=breach_of(s, last_ts),
            checks_firing=list(getattr(s, "checks_firing", None) or []), held_by=getattr(s, "held_by", None),
            kept_out=int(getattr(s, "kept_out", 0)),
        )


def with_units(out: StreamOut, book: UnitBook, features: Sequence[str] = ()) -> StreamOut:
    """``out`` with its unit; a multivariate stream's per feature of ``features`` (its model's inputs)."""
    if "/" in out.id.split(";", 1)[0]:
        out.unit = book.unit_of(out.id)
    else:
        out.units = book.units_of(out.id, features)
        out.unit = None if out.feature is None else out.units.get(out.feature)
    return out


def breach_of(s: Any, last_ts: int | None) -> BreachOut | None:
    """A status's predicted breach (its ``breach_*`` fields), None when none is predicted."""
    eta, p = finite(getattr(s, "breach_eta_s", None)), finite(getattr(s, "breach_probability", None))
    if eta is None or p is None:
        return None
    return BreachOut(
        eta_s=eta, time=ts_to_dt(last_ts + round(eta * 1e9)) if last_ts is not None else None, probability=p,
        limit=finite(s.breach_limit), side=s.breach_side, feature=s.breach_feature,
    )


# -- forecasts ------------------------------------------------------------------------
class ForecastOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    stream_id: str | None = Field(examples=["pump-1/temperature"])
    model: str = Field(examples=["demo"])
    model_version: str = Field(examples=["1"])
    made_at: datetime = Field(description="Time of the last step the forecast has seen.")
    cadence_s: float = Field(examples=[60.0])
    features: list[str] = Field(description="Output feature names: the columns below.", examples=[["value"]])
    times: list[datetime] = Field(description="H forecast times: made_at + (h+1)·cadence.")
    mean: list[list[float | None]] = Field(description="H×F expected values, raw units.", examples=[[[20.1], [20.3]]])
    scale: list[list[float | None]] | None = Field(description="H×F predicted spread (null: not probabilistic).")
    lower: list[list[float | None]] | None = Field(description="mean − z·scale.")
    upper: list[list[float | None]] | None = Field(description="mean + z·scale.")
    band_z: float = Field(description="z used for the bands.")

    @classmethod
    def from_forecast(cls, fc: Forecast, z: float, stream_id: str | None = None) -> ForecastOut:
        return cls.model_validate(forecast_body(fc, z, stream_id))


def forecast_body(fc: Forecast, z: float, stream_id: str | None = None) -> dict[str, Any]:
    """``ForecastOut`` as a plain dict, for the hot route to serialise with orjson directly
    (pydantic validating and then serialising the same numbers again doubled the cost)."""
    step_ns = round(fc.cadence_s * 1e9)
    mean = [[finite(v) for v in row] for row in fc.mean]
    scale = lower = upper = None
    if fc.scale is not None:
        scale = [[finite(v) for v in row] for row in fc.scale]
        lower = [[finite(m - z * s) for m, s in zip(mr, sr, strict=True)] for mr, sr in zip(fc.mean, fc.scale, strict=True)]
        upper = [[finite(m + z * s) for m, s in zip(mr, sr, strict=True)] for mr, sr in zip(fc.mean, fc.scale, strict=True)]
    return {
        "stream_id": stream_id if stream_id is not None else (fc.stream_id or None),
        "model": fc.model, "model_version": fc.model_version, "made_at": ts_to_dt(fc.ts_ns),
        "cadence_s": fc.cadence_s, "features": list(fc.features),
        "times": [ts_to_dt(fc.ts_ns + (h + 1) * step_ns) for h in range(len(fc.mean))],
        "mean": mean, "scale": scale, "lower": lower, "upper": upper, "band_z": z,
    }


class PredictIn(BaseModel):
    """Stateless forecast: the history goes in the body, the forecast comes back."""

    model_config = ConfigDict(
        protected_namespaces=(),
        extra="forbid",
        json_schema_extra={
            "examples": [{
                "model": "demo",
                "values": [[20.0], [20.5], [None], [21.0]],
                "timestamps_ns": [1700000000000000000, 1700000060000000000, 1700000120000000000, 1700000180000000000],
            }]
        },
    )

    model: str = Field(min_length=1, max_length=64, description="Model name.")
    version: str | None = Field(None, max_length=64, description="Model version; newest when empty.")
    values: list[Annotated[list[FiniteFloat | None], Field(min_length=1, max_length=1024)]] = Field(
        min_length=1, max_length=MAX_PREDICT_STEPS,
        description="T×F history in the model's feature order, oldest first; null marks a missing value.",
    )
    timestamps_ns: list[Annotated[int, Field(ge=0, le=2**63 - 1)]] = Field(
        min_length=1, max_length=MAX_PREDICT_STEPS, description="T timestamps (ns since epoch, UTC), increasing."
    )
    cadence_s: FiniteFloat | None = Field(None, gt=0, description="Step length; the model's cadence when empty.")


# -- readings -------------------------------------------------------------------------
class MessageIn(BaseModel):
    topic: str = Field(min_length=1, max_length=1024, examples=["sensors/pump-1/temperature"])
    payload: Any = Field(
        description="What an MQTT message would carry: a JSON value (sent as its JSON text) or a string (sent as is).",
        examples=[{"value": 21.5, "time": "2024-01-01T00:00:00Z"}],
    )


class ReadingsIn(BaseModel):
    """Readings over HTTP: the same topics and payloads as MQTT, decoded by the same decoder."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"messages": [{"topic": "sensors/pump-1/temperature", "payload": {"value": 21.5}}]}]},
    )

    messages: list[MessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)


class RefusalOut(BaseModel):
    index: int = Field(description="Position of the message in the request.")
    reason: str = Field(examples=["bad_value"])
    detail: str


class ReadingsOut(BaseModel):
    accepted: int = Field(description="Readings made durable (store or spool).")
    refused: list[RefusalOut]


# -- alerts -------------------------------------------------------------------------
class AlertOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    stream_id: str
    device: str
    quantity: str
    state: Literal["firing", "resolved"]
    time: datetime
    ts_ns: int
    value: float | None
    expected: float | None
    lower: float | None
    upper: float | None
    score: float | None
    model: str
    model_version: str
    warm: bool
    check: str = Field(description="The detector: anomaly, stuck, silent, out_of_range, rate_of_change, "
                       "predicted_breach. At most one alert per stream and check fires at a time.")
    kind: str = Field(description="What happened: spike, level_shift, drift, variance, multivariate (check "
                      "anomaly), or the check's own name.")
    onset_time: datetime | None = Field(None, description="First anomalous reading of the episode.")
    onset_value: float | None = None
    onset_expected: float | None = Field(None, description="The value expected before the onset.")
    contributors: list[tuple[str, float]] = Field(
        default_factory=list, description="Multivariate evidence: (feature, share of the distance), top first."
    )
    extra: dict[str, str]
    unit: str | None = Field(None, examples=["°C"], description="Unit of value, expected and the band; null: unknown.")
    id: int | None = Field(None, description="The event's id in the alert history (POST /v1/alerts/{id}/ack).")
    silenced: bool = Field(False, description="The stream was silenced: recorded, not notified (no event topic, "
                           "no webhooks).")
    acked_at: datetime | None = Field(None, description="When the event was acknowledged; null: not yet.")
    acked_by: str | None = Field(None, description="Who acknowledged it, as given in the ack.")
    ack_note: str | None = None

    @classmethod
    def from_row(cls, row: HistoryRow) -> AlertOut:
        """A history row: the alert with its id, silence and acknowledgement."""
        return cls.from_alert(row.alert).model_copy(update={
            "id": row.id, "silenced": row.silenced, "acked_by": row.acked_by, "ack_note": row.ack_note,
            "acked_at": None if row.acked_ns is None else ts_to_dt(row.acked_ns),
        })

    @classmethod
    def from_alert(cls, a: Alert) -> AlertOut:
        return cls(
            stream_id=a.stream_id, device=a.device, quantity=a.quantity, state=a.state,
            time=ts_to_dt(a.ts_ns), ts_ns=a.ts_ns, value=finite(a.value), expected=finite(a.expected),
            lower=finite(a.lower), upper=finite(a.upper), score=finite(a.score), model=a.model,
            model_version=a.model_version, warm=a.warm, check=a.check, kind=a.kind,
            onset_time=None if a.onset_ns is None else ts_to_dt(a.onset_ns), onset_value=finite(a.onset_value),
            onset_expected=finite(a.onset_expected), contributors=list(a.contributors), extra=dict(a.extra),
            unit=a.unit,
        )


# -- models and health ------------------------------------------------------------------
class ModelOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: str
    kind: str
    cell: str
    features: list[str]
    output_features: list[str]
    cadence_s: float
    horizon: int
    warmup_steps: int
    probabilistic: bool
    default_threshold: float
    time_features: list[str]
    sha256: str
    created_at: datetime
    streams: int = Field(description="Streams this version serves right now.")
    metrics: dict[str, dict[str, float | None]]
    grid: list[int] | None = Field(
        None, examples=[[8, 8]], description="[H, W] of a sensor grid model: its features are the H*W pixels in "
        "row-major order (the dashboard draws its streams as a heat map); null: not a grid."
    )


class ReloadOut(BaseModel):
    loaded: list[str] = Field(description="name/version of models now in service.")
    refused: dict[str, str] = Field(description="Artefacts refused, with the reason.")


class HealthOut(BaseModel):
    status: Literal["ok"]


class CheckOut(BaseModel):
    ok: bool
    detail: str
    degraded: bool = False  # working, but on a fallback (the store is down and readings spool)


class ReadyOut(BaseModel):
    ready: bool
    # not_ready (503) when a check fails; degraded (200) while a part runs on its fallback.
    status: Literal["ready", "degraded", "not_ready"] = "ready"
    checks: dict[str, CheckOut]


def page_headers(what: str, param: str) -> dict[str, Any]:
    """OpenAPI headers of a paged answer: ``what`` follows, fetched by passing ``param``."""
    return {
        "X-Next-Cursor": {
            "description": f"Present when {what} follow: pass it as `{param}` to get the next page.",
            "schema": {"type": "string"},
        },
        "Link": {
            "description": 'The next page as a relative URL, `<...>; rel="next"` (RFC 8288); present with X-Next-Cursor.',
            "schema": {"type": "string"},
        },
    }
