"""Test helpers over ``tools.modelkit``: kit models in a tmp models dir, settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.config import Settings
from tools.modelkit import (
    KitSpec,
    KitWeights,
    NumpyKitModel,
    build_onnx,
    make_weights,
    write_model,
)

__all__ = ["KitSpec", "KitWeights", "NumpyKitModel", "build_onnx", "make_weights", "settings_for", "write_model"]


def settings_for(tmp: Path, models_dir: Path, **groups: dict[str, Any]) -> Settings:
    """Settings with the models dir and every state path under ``tmp``."""
    data: dict[str, Any] = {
        "models": {"dir": str(models_dir), "watch": False},
        "streams": {"checkpoint_dir": str(tmp / "state"), "settings_path": str(tmp / "stream_settings.sqlite")},
        "store": {"url": "memory://", "spool_dir": str(tmp / "spool")},
        "alerts": {"outbox_dir": str(tmp / "outbox"), "history_path": str(tmp / "alerts.sqlite")},
    }
    for group, values in groups.items():
        data.setdefault(group, {}).update(values)
    return Settings(_env_file=None, **data)  # type: ignore[call-arg]
