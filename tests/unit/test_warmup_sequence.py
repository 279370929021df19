"""Warm-up through the sequence form (service/streams/table.py): steps of rows that stay
warming wait and run in one sequence call; the result equals a call per step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.metrics import Metrics
from service.records import Reading, StreamKey
from service.runtime.registry import ModelRegistry
from service.store.memory import MemoryStore
from service.streams.engine import Engine
from service.streams.table import ModelTable
from tests.modelkit import KitSpec, settings_for, write_model

pytest.importorskip("onnx")

C = 60 * 10**9
T0 = 1_700_000_000 // 60 * C
SPEC = KitSpec(name="m", layers=2, hidden=8, time_features=("hour_sin", "dow_cos"), warmup_steps=40,
               mean=(20.0,), std=(3.0,))


def _engine(tmp: Path, sequence: bool, store: MemoryStore) -> Engine:
    models = tmp / ("seq" if sequence else "step") / "models"
    write_model(models, SPEC, **({} if sequence else {"sequence_file": None}))
    settings = settings_for(tmp / ("seq" if sequence else "step"), models, streams={"warmup_wait_s": 30.0})
    return Engine(settings, ModelRegistry(models), store, Metrics())


def _history(keys: list[StreamKey], n: int) -> list[Reading]:
    rng = np.random.default_rng(0)
    out = []
    for k in keys:
        vals = 20 + 3 * np.sin(np.arange(n) / 5.0) + rng.normal(0, 0.2, n)
        keep = rng.random(n) > 0.1  # missing buckets
        keep[10:16] = False  # a gap
        out += [Reading(k, T0 + i * C, float(v)) for i, v in enumerate(vals) if keep[i]]
    return out


def test_engine_warm_up_through_the_sequence_form_equals_a_call_per_step(tmp_path: Path) -> None:
    keys = [StreamKey(f"dev{i}", "value") for i in range(5)]
    engines = []
    for sequence in (True, False):
        store = MemoryStore()
        store.write(_history(keys, 60))
        eng = _engine(tmp_path, sequence, store)
        for step in range(60, 70):  # live readings: the first tick warms every stream from the store
            eng.accept([Reading(k, T0 + step * C, 20.5) for k in keys])
            eng.tick(T0 + step * C + 1)
        engines.append(eng)
    seq, step = engines
    assert [lane.table.defers for lane in seq._lanes.values()] == [True]
    assert [lane.table.defers for lane in step._lanes.values()] == [False]
    for k in keys:
        a, b = seq.stream(k.id), step.stream(k.id)
        assert a is not None and b is not None and a.status == b.status == "ok"
        fa, fb = seq.forecast(k.id), step.forecast(k.id)
        assert fa is not None and fb is not None
        assert np.abs(np.array(fa.mean) - np.array(fb.mean)).max() <= 1e-4
    (la,), (lb,) = seq._lanes.values(), step._lanes.values()
    rows = np.flatnonzero(la.occupied)
    assert rows.tolist() == np.flatnonzero(lb.occupied).tolist() and len(rows) == len(keys)
    assert np.abs(la.table.export(rows)["state"] - lb.table.export(rows)["state"]).max() <= 1e-4


def test_waiting_steps_run_before_a_real_step_an_export_or_a_reset(tmp_path: Path) -> None:
    write_model(tmp_path, SPEC)
    loaded = ModelRegistry(tmp_path).get("m")
    held, rolled = ModelTable(loaded), ModelTable(loaded)
    rolled.defers = False
    assert held.defers
    for t in (held, rolled):
        t.grow(4)
    rng = np.random.default_rng(1)
    x = (20 + 3 * rng.standard_normal((45, 4, 1))).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    for i in range(45):
        rows = np.array([0, 1, 2] if i < 20 else [0, 1, 2, 3], np.intp)  # row 3 starts later
        buckets = np.full(len(rows), T0 // C + i, np.int64)
        for t in (held, rolled):
            t.step(rows, buckets, x[i, rows])
        if i == 10:  # a checkpoint mid-warm-up sees the state of every step fed so far
            assert held._held_n[:3].tolist() == [11, 11, 11]
            got, want = held.export(np.array([1], np.intp)), rolled.export(np.array([1], np.intp))
            assert np.abs(got["state"] - want["state"]).max() <= 1e-5
            assert held._held_n[:3].tolist() == [11, 0, 11]
        if i == 30:
            held.reset(np.array([2], np.intp))  # a restart drops what waits
            rolled.reset(np.array([2], np.intp))
    all_rows = np.arange(4)
    assert np.abs(held.export(all_rows)["state"] - rolled.export(all_rows)["state"]).max() <= 1e-5
    assert np.abs(np.nan_to_num(held.fc[:2] - rolled.fc[:2])).max() <= 1e-4  # warm rows: the same forecasts
    assert held._held_x is None  # nothing waits: the buffers are given back
