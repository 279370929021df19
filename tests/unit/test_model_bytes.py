"""The model file is read once, hashed, and onnxruntime runs those very bytes; refusals
shown by the API name files relative to the models directory, never a filesystem path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import service.runtime.registry as registry_mod
from service.errors import ModelError
from service.runtime.manifest import Manifest, read_model
from service.runtime.registry import ModelRegistry
from service.runtime.session import OrtRuntime
from tests.modelkit import KitSpec, write_model

KIT = KitSpec(name="kit", version="1")
WIDER = KitSpec(name="kit", version="1", hidden=16)  # a valid model, state 16 instead of 8


def _other_onnx(tmp: Path) -> bytes:
    folder, _ = write_model(tmp / "other", WIDER)
    return (folder / "model.onnx").read_bytes()


def test_runtime_runs_the_bytes_that_were_hashed_not_the_file_now_on_disk(tmp_path: Path) -> None:
    folder, _ = write_model(tmp_path / "models", KIT)
    manifest, blob = read_model(folder)
    assert blob == (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(_other_onnx(tmp_path))  # swapped after the hash
    rt = OrtRuntime(folder, manifest, model_bytes=blob)
    x = np.ones((2, 1), np.float32)
    _, _, state = rt.step(x, np.zeros((2, manifest.state_size), np.float32), None)
    assert state.shape == (2, 8)  # the hashed model (state 8), not the swapped one (16)
    with pytest.raises(ModelError, match="does not match manifest"):
        OrtRuntime(folder, manifest)  # read from disk now: the swapped file fails the hash


def test_runtime_refuses_bytes_that_do_not_match_the_manifest(tmp_path: Path) -> None:
    folder, _ = write_model(tmp_path / "models", KIT)
    manifest, _ = read_model(folder)
    with pytest.raises(ModelError, match="does not match manifest"):
        OrtRuntime(folder, manifest, model_bytes=_other_onnx(tmp_path))


def test_registry_loads_what_it_hashed_even_if_the_file_is_swapped_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    folder, _ = write_model(models, KIT)
    other = _other_onnx(tmp_path)
    real = registry_mod.read_model

    def read_then_swap(f: Path) -> tuple[Manifest, bytes]:
        got = real(f)
        (f / "model.onnx").write_bytes(other)  # the swap lands between the hash and the load
        return got

    monkeypatch.setattr(registry_mod, "read_model", read_then_swap)
    reg = ModelRegistry(models)
    assert reg.errors == {}
    assert reg.get("kit").manifest.state_size == 8
    assert (folder / "model.onnx").read_bytes() == other  # the swap did happen


def test_refusals_name_files_relative_to_the_models_directory(tmp_path: Path) -> None:
    models = tmp_path / "models"
    folder, _ = write_model(models, KIT)
    (folder / "model.onnx").write_bytes(b"\x00garbage")
    reg = ModelRegistry(models)
    reason = reg.errors["kit/1"]
    assert "does not match manifest" in reason and reason.startswith("models/kit/1/model.onnx:")
    assert str(tmp_path) not in reason
    (folder / "manifest.json").write_text("{not json")
    assert str(tmp_path) not in reg.reload()["errors"]["kit/1"]  # type: ignore[index]
