"""A stream's own alert rules: ``GET/PUT/DELETE /v1/streams/{id}/settings``.

The rules are stored first (``service/store/streamsettings.py``: on disk when PUT answers)
and then applied to the live engine (``Engine.set_rules``). A stream the engine has not
seen yet may be configured ahead: its rules apply when it appears. GET shows the stream's
own rules and the effective ones (settings < binding < own, ``Engine.rules_of``).
"""

from __future__ import annotations

import logging
import math
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException
from pydantic import BaseModel, Field

from service.api.deps import (
    EngineDep,
    PipelineDep,
    ReadScope,
    WriteScope,
    checked_stream_id,
    settings_store,
)
from service.api.schemas import ErrorOut
from service.config import StreamRules
from service.ports import EngineLike
from service.store.streamsettings import SettingsStoreError, StreamSettings
from service.streams.rules import ResolvedRules

log = logging.getLogger(__name__)
router = APIRouter()


class FeatureRulesOut(BaseModel):
    min: float | None = Field(description="Physical lower limit (out_of_range); null: none.")
    max: float | None = Field(description="Physical upper limit (out_of_range); null: none.")
    max_rate: float | None = Field(description="Largest change per second (rate_of_change); null: none.")
    stuck_steps: int = Field(description="Steps without change that make the stream stuck (0: off).")
    stuck_tolerance: float = Field(description="A change up to this much counts as no change.")
    lower: float | None = Field(description="Operating lower limit (predicted_breach); null: none.")
    upper: float | None = Field(description="Operating upper limit (predicted_breach); null: none.")


class EffectiveRulesOut(BaseModel):
    threshold: float | None = Field(description="Anomaly score threshold; null: the model's or the settings' default.")
    accept_after_steps: int = Field(description="Steps of persistent deviation before the new level is accepted (0: never).")
    silent_after_s: float = Field(description="Seconds without a reading before a silent alert (0: off).")
    breach_probability: float = Field(description="Probability at which a predicted breach is announced.")
    features: dict[str, FeatureRulesOut] = Field(description="Per input feature of the stream's model.")


class StreamSettingsOut(BaseModel):
    stream_id: str = Field(examples=["pump-1/temperature"])
    known: bool = Field(description="Whether the engine serves this stream now (false: configured ahead).")
    own: StreamRules | None = Field(description="The stream's own rules (null: it inherits everything).")
    effective: EffectiveRulesOut | None = Field(
        description="The rules in force: settings < model binding < own (null while the engine does not serve it)."
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "The engine does not serve the stream and it has no own rules."},
    422: {"model": ErrorOut, "description": "Not a stream id, or the rules are not valid."},
    503: {"model": ErrorOut, "description": "No settings store in this process, or it cannot be written."},
}
_EXAMPLE = {"threshold": 0.999, "min": -40.0, "max": 125.0, "upper": 90.0, "stuck_steps": 60}


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _effective(resolved: ResolvedRules, features: list[str]) -> EffectiveRulesOut:
    n = len(resolved.min)
    names = features if len(features) == n else [str(i) for i in range(n)]
    return EffectiveRulesOut(
        threshold=resolved.threshold, accept_after_steps=resolved.accept_after_steps,
        silent_after_s=resolved.silent_after_s, breach_probability=resolved.breach_probability,
        features={
            name: FeatureRulesOut(
                min=_num(resolved.min[i]), max=_num(resolved.max[i]), max_rate=_num(resolved.max_rate[i]),
                stuck_steps=int(resolved.stuck_steps[i]), stuck_tolerance=float(resolved.stuck_tolerance[i]),
                lower=_num(resolved.lower[i]), upper=_num(resolved.upper[i]),
            )
            for i, name in enumerate(names)
        },
    )


def _input_features(engine: EngineLike, stream_id: str) -> list[str] | None:
    """The input features of the model serving the stream (None: not served now)."""
    status = engine.stream(stream_id)
    if status is None:
        return None
    for m in engine.models():
        if m.name == status.model and m.version == status.model_version:
            return list(m.features)
    return None


def _out(engine: EngineLike, store: StreamSettings, stream_id: str) -> StreamSettingsOut:
    found = engine.rules_of(stream_id)
    own = store.get(stream_id)
    if found is None:
        return StreamSettingsOut(stream_id=stream_id, known=False, own=own, effective=None)
    return StreamSettingsOut(stream_id=stream_id, known=True, own=own,
                             effective=_effective(found[1], _input_features(engine, stream_id) or []))


def _check_rules(rules: StreamRules, features: list[str] | None, where: str = "") -> None:
    """What one JSON schema cannot say: limits in order, feature names the model has."""
    for low, high in (("min", "max"), ("lower", "upper")):
        lo, hi = getattr(rules, low), getattr(rules, high)
        if lo is not None and hi is not None and not lo < hi:
            raise HTTPException(422, f"{where}{low} ({lo}) must be below {where}{high} ({hi})")
    for name, sub in (rules.features or {}).items():
        if features is not None and name not in features:
            raise HTTPException(422, f"features.{name}: the stream's model has no input feature {name!r}; it has "
                                     f"{', '.join(features)}")
        if sub.features:
            raise HTTPException(422, f"features.{name}.features: feature rules cannot nest")
        _check_rules(sub, features, f"features.{name}.")


@router.get("/{stream_id:path}/settings", dependencies=[ReadScope], responses=_ERRORS)
def get_settings(stream_id: str, engine: EngineDep, pipeline: PipelineDep) -> StreamSettingsOut:
    """The stream's own alert rules and the effective ones."""
    store = settings_store(pipeline)
    out = _out(engine, store, checked_stream_id(stream_id))
    if not out.known and out.own is None:
        raise HTTPException(404, f"stream {stream_id!r} is not served and has no own settings")
    return out


@router.put("/{stream_id:path}/settings", dependencies=[WriteScope], responses=_ERRORS)
def put_settings(
    stream_id: str, engine: EngineDep, pipeline: PipelineDep,
    rules: Annotated[StreamRules, Body(openapi_examples={"limits": {"summary": "limits and rules", "value": _EXAMPLE}})],
) -> StreamSettingsOut:
    """Set the stream's own alert rules (every field optional: empty inherits); they replace
    its previous own rules, are stored durably and apply at once (or when the stream appears)."""
    store = settings_store(pipeline)
    sid = checked_stream_id(stream_id)
    _check_rules(rules, _input_features(engine, sid))
    _apply(engine, store, sid, rules)
    return _out(engine, store, sid)


@router.delete("/{stream_id:path}/settings", dependencies=[WriteScope], responses=_ERRORS)
def delete_settings(stream_id: str, engine: EngineDep, pipeline: PipelineDep) -> StreamSettingsOut:
    """Forget the stream's own rules: it inherits the binding's and the settings' again."""
    store = settings_store(pipeline)
    sid = checked_stream_id(stream_id)
    _apply(engine, store, sid, None)
    return _out(engine, store, sid)


def _apply(engine: EngineLike, store: StreamSettings, stream_id: str, rules: StreamRules | None) -> None:
    """Store, then apply live; when the engine refuses them, the stored rules go back."""
    try:
        before = store.put(stream_id, rules)
    except SettingsStoreError as e:
        log.warning("stream settings of %r: %s", stream_id[:200], e)  # the path stays in the log
        raise HTTPException(503, "the stream settings cannot be written right now (details in the service log)") from None
    try:
        engine.set_rules(stream_id, rules)
    except Exception as e:
        store.put(stream_id, before)
        if isinstance(e, ValueError):  # rules the engine cannot apply to this stream's model
            raise HTTPException(422, str(e)) from None
        raise
