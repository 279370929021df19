"""Models in service, and hot reload."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from fastapi import APIRouter

from service.api.deps import EngineDep, ReadScope, WriteScope
from service.api.schemas import ModelOut, ReloadOut
from service.api.schemas import finite as _finite

if TYPE_CHECKING:
    from service.streams.status import ModelInfo

router = APIRouter(prefix="/v1/models", tags=["models"])


def _model_out(m: ModelInfo) -> ModelOut:
    return ModelOut(
        name=m.name, version=m.version, kind=m.kind, cell=m.cell, features=list(m.features),
        output_features=list(m.output_features), time_features=list(m.time_features),
        streams=m.streams, cadence_s=m.cadence_s, horizon=m.horizon,
        warmup_steps=m.warmup_steps, probabilistic=m.probabilistic,
        default_threshold=m.default_threshold, sha256=m.sha256, created_at=datetime.fromisoformat(m.created_at),
        metrics={split: {k: _finite(v) for k, v in vals.items()} for split, vals in m.metrics.items()},
        grid=list(m.grid) if m.grid else None,
    )


@router.get("", dependencies=[ReadScope])
def list_models(engine: EngineDep) -> list[ModelOut]:
    """Every model in service, with its manifest summary."""
    return [_model_out(m) for m in engine.models()]


@router.get("/refused", dependencies=[ReadScope])
def refused_models(engine: EngineDep) -> dict[str, str]:
    """Model folders the last load or reload refused (name/version -> reason); older versions keep serving."""
    # The directory watcher reloads on its own: this is where its refusals show up.
    return dict(engine.registry.errors)


@router.post("/reload", dependencies=[WriteScope])
def reload_models(engine: EngineDep) -> ReloadOut:
    """Re-scan the models directory; a broken artefact keeps the old version serving."""
    report = engine.reload_models()
    errors = report.get("errors", {})
    return ReloadOut(
        loaded=sorted(_names(report, "loaded")) + sorted(_names(report, "unchanged")),
        refused=dict(errors) if isinstance(errors, dict) else {},
    )


def _names(report: Mapping[str, list[str] | dict[str, str]], key: str) -> list[str]:
    value = report.get(key, [])
    return list(value) if isinstance(value, list) else []
