"""Models in service, and hot reload."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api.deps import EngineDep, ReadScope, WriteScope
from service.api.schemas import ModelOut, ReloadOut
from service.api.schemas import finite as _finite

router = APIRouter(prefix="/v1/models", tags=["models"])


def _model_out(m: Any) -> ModelOut:
    man = getattr(m, "manifest", m)  # the engine's ModelInfo, or a bare manifest
    return ModelOut(
        name=man.name, version=man.version, kind=man.kind, cell=man.cell, features=list(man.features),
        output_features=list(man.output_features), time_features=list(man.time_features),
        streams=int(getattr(m, "streams", 0)), cadence_s=man.cadence_s, horizon=man.horizon,
        warmup_steps=man.warmup_steps, probabilistic=man.probabilistic,
        default_threshold=man.default_threshold, sha256=man.sha256, created_at=man.created_at,
        metrics={split: {k: _finite(v) for k, v in vals.items()} for split, vals in man.metrics.items()},
    )


@router.get("", dependencies=[ReadScope])
def list_models(engine: EngineDep) -> list[ModelOut]:
    """Every model in service, with its manifest summary."""
    return [_model_out(m) for m in engine.models()]


@router.get("/refused", dependencies=[ReadScope])
def refused_models(engine: EngineDep) -> dict[str, str]:
    """Model folders the last load or reload refused (name/version -> reason); older versions keep serving."""
    # The directory watcher reloads on its own: this is where its refusals show up.
    registry = getattr(engine, "registry", None)
    return {str(k): str(v) for k, v in dict(getattr(registry, "errors", {})).items()}


@router.post("/reload", dependencies=[WriteScope])
def reload_models(engine: EngineDep) -> ReloadOut:
    """Re-scan the models directory; a broken artefact keeps the old version serving."""
    report = engine.reload_models()
    return ReloadOut(
        loaded=sorted(_as_list(report, "loaded")) + sorted(_as_list(report, "unchanged")),
        refused={str(k): str(v) for k, v in _as_dict(report, "errors").items()},
    )


def _as_list(report: Any, key: str) -> list[str]:
    value = report.get(key, []) if isinstance(report, dict) else getattr(report, key, [])
    return [str(v) for v in value]


def _as_dict(report: Any, key: str) -> dict[Any, Any]:
    value = report.get(key, {}) if isinstance(report, dict) else getattr(report, key, {})
    return dict(value)
