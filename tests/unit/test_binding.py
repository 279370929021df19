"""Which model serves a stream: bindings, then the models' declared streams, then feature names;
a model hot-loaded takes over its streams and they re-warm at once; DELETE forgets a stream."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from service.config import ModelBinding
from service.metrics import Metrics
from service.records import Reading, StreamKey
from service.runtime.manifest import load_manifest
from service.runtime.registry import ModelRegistry
from service.store.memory import MemoryStore
from service.streams.binding import route
from service.streams.engine import Engine
from tests.modelkit import KitSpec, settings_for, write_model

REPO = Path(__file__).resolve().parents[2]
C = 60 * 10**9
T0 = 1_700_000_000 // 60 * C
OLD, NEW = "2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z"


def kit(models: Path, name: str, version: str = "1", features: tuple[str, ...] = ("value",), **manifest: object) -> None:
    write_model(models, KitSpec(name=name, version=version, features=features, warmup_steps=4,
                                mean=(20.0,) * len(features), std=(3.0,) * len(features)), **manifest)


def served(registry: ModelRegistry, stream: str, bindings: list[ModelBinding] | None = None) -> str | None:
    rt = route(StreamKey.parse(stream), registry, bindings or [])
    return None if rt is None else f"{rt.model.key}:{rt.stream_id}:{rt.why}"


def test_a_binding_wins_over_declared_streams(tmp_path: Path) -> None:
    kit(tmp_path, "machine", streams=["machine*/value"])
    kit(tmp_path, "other")
    reg = ModelRegistry(tmp_path)
    assert served(reg, "machine2/value") == "machine/1:machine2/value:streams"
    bound = [ModelBinding(model="other", device="machine2")]
    assert served(reg, "machine2/value", bound) == "other/1:machine2/value:binding"
    # A binding to a model that is not loaded falls through to the declared streams.
    assert served(reg, "machine2/value", [ModelBinding(model="absent")]) == "machine/1:machine2/value:streams"


def test_the_newest_model_declaring_a_stream_serves_it(tmp_path: Path) -> None:
    kit(tmp_path, "a", streams=["machine*/value"], created_at=NEW)
    kit(tmp_path, "b", streams=["machine2/*"], created_at=OLD)
    kit(tmp_path, "c", streams=["pump*/value"], created_at="2027-01-01T00:00:00Z")
    reg = ModelRegistry(tmp_path)
    assert served(reg, "machine2/value") == "a/1:machine2/value:streams"  # newer than b; c does not match
    assert served(reg, "machine2/temp") == "b/1:machine2/temp:streams"  # only b's glob matches
    kit(tmp_path, "b", version="2", streams=["machine2/*"], created_at="2026-09-01T00:00:00Z")
    reg.reload()
    assert served(reg, "machine2/value") == "b/2:machine2/value:streams"  # now the newest


def test_a_model_declaring_streams_is_no_catch_all(tmp_path: Path) -> None:
    kit(tmp_path, "scoped", streams=["dev[0-9]*/*"])
    reg = ModelRegistry(tmp_path)
    assert served(reg, "dev01/temperature") == "scoped/1:dev01/temperature:streams"
    assert served(reg, "machine2/value") is None  # not even by its feature name 'value'
    # A model declaring nothing keeps the feature-name rule and its 'value' catch-all.
    kit(tmp_path, "anon")
    reg.reload()
    assert served(reg, "machine2/temp") == "anon/1:machine2/temp:catch-all"
    assert served(reg, "dev01/temperature") == "scoped/1:dev01/temperature:streams"  # declared before catch-all


def test_feature_names_only_without_bindings(tmp_path: Path) -> None:
    kit(tmp_path, "temps", features=("temperature",))
    kit(tmp_path, "machine", streams=["machine*/value"])
    reg = ModelRegistry(tmp_path)
    assert served(reg, "pump/temperature") == "temps/1:pump/temperature:features"
    bindings = [ModelBinding(model="temps", device="boiler*")]
    assert served(reg, "pump/temperature", bindings) is None  # bindings replace the feature-name rule ...
    assert served(reg, "machine2/value", bindings) == "machine/1:machine2/value:streams"  # ... not declared streams


def test_many_declared_ids_and_globs_together(tmp_path: Path) -> None:
    # A store training declares every id it read (escaped); plain ids and globs both match.
    kit(tmp_path, "fleet", streams=[f"s{i}/v" for i in range(5000)] + ["x*/v", "odd[[]1]/v"])
    reg = ModelRegistry(tmp_path)
    assert served(reg, "s4999/v") == "fleet/1:s4999/v:streams"
    assert served(reg, "x7/v") == "fleet/1:x7/v:streams"
    assert served(reg, "odd[1]/v") == "fleet/1:odd[1]/v:streams"
    assert served(reg, "s5000/v") is None and served(reg, "odd1/v") is None and served(reg, "s1/v2") is None


def test_a_multivariate_model_declares_devices(tmp_path: Path) -> None:
    kit(tmp_path, "press", features=("pressure", "flow"), streams=["press7"])
    reg = ModelRegistry(tmp_path)
    assert served(reg, "press7/flow") == "press/1:press7:streams"
    assert served(reg, "press8/flow") is None
    assert served(reg, "press7/other") is None  # not one of its features


def test_the_demo_model_serves_the_simulators_devices_only() -> None:
    demo = load_manifest(REPO / "models" / "demo" / "1")  # the SHA-256 of its ONNX file still matches
    assert demo.streams
    reg = ModelRegistry(REPO / "models")
    assert served(reg, "dev01/temperature") == "demo/1:dev01/temperature:streams"
    assert served(reg, "dev12/power;site=hq") == "demo/1:dev12/power;site=hq:streams"
    assert served(reg, "machine2/value") is None


def engine(tmp: Path, store: MemoryStore, **models: object) -> Engine:
    s = settings_for(tmp, tmp / "models", models=dict(models), streams={"warmup_wait_s": 30.0})
    return Engine(s, ModelRegistry(tmp / "models"), store, Metrics())


def history(store: MemoryStore, key: StreamKey, n: int) -> None:
    vals = 20 + 3 * np.sin(np.arange(n) / 4.0)
    store.write([Reading(key, T0 + i * C, float(v)) for i, v in enumerate(vals)])


def test_a_hot_loaded_model_takes_over_its_streams_and_rewarms_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.streams")
    store = MemoryStore()
    models = tmp_path / "models"
    kit(models, "demo", streams=["dev[0-9]*/*"], created_at=OLD)
    eng = engine(tmp_path, store)
    served_key, mine = StreamKey("dev01", "value"), StreamKey("machine2", "value")
    for key in (served_key, mine):
        history(store, key, 12)
    now = T0 + 11 * C + 1
    eng.accept([Reading(served_key, T0 + 11 * C, 20.0), Reading(mine, T0 + 11 * C, 20.0)])
    eng.tick(now)
    s = eng.stream("dev01/value")
    assert s is not None and s.model == "demo" and s.status == "ok"
    none = eng.stream("machine2/value")  # listed, with no model
    assert none is not None and none.status == "no_model" and none.model is None
    assert eng.unserved() == ["machine2/value"]
    assert [(s.id, s.status) for s in eng.streams_page(10)[0]] == [("dev01/value", "ok"), ("machine2/value", "no_model")]
    assert [s.id for s in eng.streams_page(10, status="no_model")[0]] == ["machine2/value"]
    assert [s.id for s in eng.streams_page(10, status="ok")[0]] == ["dev01/value"]
    assert [s.id for s in eng.streams_page(1, after="dev01/value")[0]] == ["machine2/value"]
    assert "stream machine2/value: no model matches" in caplog.text

    kit(models, "machine", streams=["machine*/value", "dev01/value"], created_at=NEW)
    caplog.clear()
    eng.reload_models()
    # Without a new reading: both streams are bound to the new model and warm from the store.
    eng.tick(now + 1)
    for sid in ("machine2/value", "dev01/value"):
        s = eng.stream(sid)
        assert s is not None and s.model == "machine" and s.status == "ok", s
        assert eng.forecast(sid) is not None
    assert eng.unserved() == [] and eng.streams_page(10, status="no_model")[0] == []
    assert "stream dev01/value: moves from model demo/1 to machine/1" in caplog.text
    assert "models: demo/1 serves 0 streams (dev[0-9]*/*); machine/1 serves 2 streams" in caplog.text


def test_delete_forgets_a_stream_and_a_reading_brings_it_back(tmp_path: Path) -> None:
    store = MemoryStore()
    kit(tmp_path / "models", "machine", streams=["machine*/value"])
    eng = engine(tmp_path, store)
    key = StreamKey("machine2", "value")
    history(store, key, 12)
    eng.accept([Reading(key, T0 + 11 * C, 20.0)])
    eng.tick(T0 + 11 * C + 1)
    assert eng.stream("machine2/value") is not None
    assert eng.forget_stream("machine2/value")
    assert eng.stream("machine2/value") is None
    assert not eng.forget_stream("machine2/value")  # unknown now
    assert len(store.read_last_many([key], 100)[key]) == 12  # its history stays
    assert eng.restore() == 0  # the checkpoint was rewritten without it
    eng.accept([Reading(key, T0 + 12 * C, 20.0)])
    eng.tick(T0 + 12 * C + 1)
    s = eng.stream("machine2/value")
    assert s is not None and s.status == "ok"  # re-created, warmed from the store


def test_the_models_folder_missing_or_empty_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="service.streams")
    eng = engine(tmp_path, MemoryStore())
    eng.restore()
    assert "does not exist: no stream is forecast" in caplog.text
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    (tmp_path / "models").mkdir()
    caplog.clear()
    eng.log_models()
    assert "holds no model" in caplog.text and "models: no model loaded" in caplog.text


def test_training_records_the_streams_the_model_serves() -> None:
    pytest.importorskip("torch")
    import argparse

    from training.command import add_arguments, config_from_args
    from training.config import DataConfig
    from training.data import Series
    from training.export import served_streams

    none = np.zeros(0, np.int64), np.zeros((0, 1), np.float32)
    uni = [Series("machine2/value", *none), Series("odd%2Fdev/t[1]", *none)]
    store = DataConfig(source="sqlite:///x.db", layout="univariate")
    assert served_streams(store, uni) == ["machine2/value", "odd%2Fdev/t[[]1]"]  # escaped: matched as globs
    assert served_streams(DataConfig(source="sqlite:///x.db"), [Series("press 7", *none)]) == ["press 7"]
    assert served_streams(DataConfig(source="data.csv"), uni) == []  # CSV columns name no stream
    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args(["--source", "data.csv", "--serve", "machine*/value, pump?/temp"]))
    assert cfg.data.serve == ("machine*/value", "pump?/temp")
    assert served_streams(cfg.data, uni) == ["machine*/value", "pump?/temp"]
