"""Model registry: validation, versions, hot reload that never takes a good model down."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from service.errors import ModelError
from service.metrics import Metrics
from service.runtime.registry import ModelRegistry
from tests.modelkit import KitSpec, write_model


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))


def test_loads_models_and_picks_newest_version(tmp_path: Path) -> None:
    for v in ("1", "2", "10"):
        write_model(tmp_path, KitSpec(name="m", version=v))
    reg = ModelRegistry(tmp_path)
    assert reg.names() == ["m"]
    assert reg.versions("m") == ["1", "2", "10"]
    assert reg.get("m").version == "10"
    assert reg.get("m", "2").manifest.version == "2"
    with pytest.raises(ModelError, match="no version '3'"):
        reg.get("m", "3")
    with pytest.raises(ModelError, match="unknown model"):
        reg.get("other")


@pytest.mark.parametrize("name", ["../m", "m/../../etc", "..", ".hidden", "a b"])
def test_names_cannot_escape_the_models_directory(tmp_path: Path, name: str) -> None:
    write_model(tmp_path, KitSpec(name="m"))
    reg = ModelRegistry(tmp_path)
    with pytest.raises(ModelError, match="invalid model name"):
        reg.get(name)
    with pytest.raises(ModelError, match="invalid model name"):
        reg.get("m", name)


def test_symlink_outside_is_ignored(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_model(outside, KitSpec(name="x"))
    models = tmp_path / "models"
    (models / "x").mkdir(parents=True)
    (models / "x" / "1").symlink_to(outside / "x" / "1")
    assert ModelRegistry(models).names() == []


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    _folder, _ = write_model(tmp_path, KitSpec(name="m"), schema_version=2)
    metrics = Metrics()
    reg = ModelRegistry(tmp_path, metrics=metrics)
    assert reg.names() == []
    assert "schema_version 2 is not understood" in reg.errors["m/1"]
    assert metrics.model_errors._value.get() == 1


def test_hash_mismatch_is_refused(tmp_path: Path) -> None:
    folder, _ = write_model(tmp_path, KitSpec(name="m"))
    with (folder / "model.onnx").open("ab") as f:
        f.write(b"\0")
    reg = ModelRegistry(tmp_path)
    assert reg.names() == []
    assert "does not match manifest" in reg.errors["m/1"]


def test_manifest_name_must_match_folder(tmp_path: Path) -> None:
    folder, _ = write_model(tmp_path, KitSpec(name="m"))
    shutil.move(str(folder.parent), str(tmp_path / "n"))
    reg = ModelRegistry(tmp_path)
    assert reg.names() == [] and "folder is n/1" in reg.errors["n/1"]


def test_corrupt_replacement_keeps_the_old_model(tmp_path: Path) -> None:
    folder, _ = write_model(tmp_path, KitSpec(name="m", seed=1))
    reg = ModelRegistry(tmp_path)
    good = reg.get("m")
    assert not reg.changed()
    (folder / "model.onnx").write_bytes(b"garbage")  # a half-copied upload
    assert reg.changed()
    report = reg.reload()
    assert "m/1" in report["errors"] and reg.get("m") is good
    assert "does not match manifest" in reg.errors["m/1"]
    # A replacement whose hash matches but that onnxruntime cannot load: still the old one.
    manifest = json.loads((folder / "manifest.json").read_text())
    import hashlib

    manifest["sha256"] = hashlib.sha256(b"garbage").hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    report = reg.reload()
    assert "cannot load" in report["errors"]["m/1"] and reg.get("m") is good
    # A good replacement is swapped in and the error clears.
    write_model(tmp_path, KitSpec(name="m", seed=2))
    _touch_later(folder / "model.onnx")
    report = reg.reload()
    assert report["loaded"] == ["m/1"] and reg.get("m") is not good and reg.errors == {}


def test_reload_reports_new_unchanged_removed(tmp_path: Path) -> None:
    write_model(tmp_path, KitSpec(name="a"))
    reg = ModelRegistry(tmp_path)
    gen = reg.generation
    assert reg.reload() == {"loaded": [], "unchanged": ["a/1"], "removed": [], "errors": {}}
    assert reg.generation == gen
    write_model(tmp_path, KitSpec(name="b"))
    shutil.rmtree(tmp_path / "a")
    assert reg.changed()
    report = reg.reload()
    assert report["loaded"] == ["b/1"] and report["removed"] == ["a/1"]
    assert reg.names() == ["b"] and reg.generation == gen + 1
