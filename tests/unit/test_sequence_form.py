"""The sequence form (service/runtime/seqform.py): T steps in one call equal T step calls.

Built at load time from any step graph, or shipped as ``model.seq.onnx`` named in the
manifest; used by predict (one call for the whole history) and ModelTable.replay.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from service.errors import ModelError
from service.runtime.manifest import read_model
from service.runtime.registry import ModelRegistry
from service.runtime.session import OrtRuntime, roll
from service.streams.predict import predict
from service.streams.table import ModelTable
from tests.modelkit import KitSpec, write_model
from tools.modelkit import kit_time_features
from tools.seqform import SEQ_FILE, ship_sequence

pytest.importorskip("onnx")

C = 60 * 10**9
T0 = 1_700_000_000 // 60 * C
SPECS = {
    "gru2-tf": KitSpec(name="g", layers=2, hidden=16, features=("a", "b"), time_features=("hour_sin", "hour_cos"),
                       horizon=6, mean=(20.0, -3.0), std=(2.0, 0.5)),
    "rnn-point": KitSpec(name="r", cell="rnn", hidden=8, probabilistic=False, mean=(100.0,), std=(0.1,)),
    "gru1": KitSpec(name="u", hidden=8, horizon=3),
}


def _history(spec: KitSpec, b: int, t: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    mu = np.asarray(spec.mean or [0.0] * len(spec.features), np.float32)
    sd = np.asarray(spec.std or [1.0] * len(spec.features), np.float32)
    x = (mu + sd * rng.standard_normal((b, t, len(spec.features)))).astype(np.float32)  # (B, T, F)
    x[rng.random(x.shape) < 0.15] = np.nan  # missing values
    x[0, 40:90] = np.nan  # a long gap
    ts = T0 + np.arange(t, dtype=np.int64) * C
    tf = kit_time_features(ts, spec)  # (T, K) | None
    return x, None if tf is None else np.broadcast_to(tf, (b, *tf.shape)).astype(np.float32).copy()


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("t", [1, 2, 700])
def test_sequence_equals_rolling_the_step_graph(tmp_path: Path, name: str, t: int) -> None:
    spec = SPECS[name]
    folder, _ = write_model(tmp_path, spec)  # ships model.seq.onnx (tools/seqform.py)
    manifest, blob = read_model(folder)
    rt = OrtRuntime(folder, manifest, model_bytes=blob)
    assert rt.sequence_source == "shipped"
    assert rt.sequence_form == "scan"  # the kit's cells are MatMuls, not RNN ops: tools/seqnative.py declines
    x, tf = _history(spec, 3, max(t, 1))
    x, tf = x[:, :t], None if tf is None else tf[:, :t]
    state = np.zeros((3, manifest.state_size), np.float32)
    state[1] = 0.3  # a non-zero initial state goes in too
    fc, sc, st = rt.sequence(x, state, tf)
    fc1, sc1, st1 = roll(rt, x, state, tf)
    std = np.asarray(spec.std or [1.0], np.float32)
    assert np.abs(fc - fc1).max() / std.min() <= 1e-4
    assert np.abs(st - st1).max() <= 1e-4
    assert (sc is None) == (sc1 is None) == (not spec.probabilistic)
    if sc is not None and sc1 is not None:
        assert np.abs(sc - sc1).max() / std.min() <= 1e-4
    assert np.isfinite(fc).all() and np.isfinite(st).all()


def test_shipped_sequence_file_is_loaded_and_hash_checked(tmp_path: Path) -> None:
    spec = SPECS["gru2-tf"]
    folder, _ = write_model(tmp_path, spec, sequence_file=None)  # an older model: no sequence form
    manifest, blob = read_model(folder)
    assert OrtRuntime(folder, manifest, model_bytes=blob).sequence_source == "none"  # rolls the step graph
    assert ship_sequence(folder) == SEQ_FILE  # python -m tools.seqform adds it
    reg = ModelRegistry(tmp_path)
    loaded = reg.get("g")
    assert loaded.manifest.sequence_file == SEQ_FILE
    assert isinstance(loaded.runtime, OrtRuntime) and loaded.runtime.sequence_source == "shipped"
    x, tf = _history(spec, 2, 50)
    state = np.zeros((2, loaded.manifest.state_size), np.float32)
    fc, _, st = loaded.runtime.sequence(x, state, tf)
    fc1, _, st1 = roll(loaded.runtime, x, state, tf)
    assert np.abs(fc - fc1).max() <= 1e-4 and np.abs(st - st1).max() <= 1e-4
    # A sequence file that no longer matches its hash refuses the model, with the reason.
    (folder / SEQ_FILE).write_bytes((folder / SEQ_FILE).read_bytes() + b"\0")
    with pytest.raises(ModelError, match="does not match manifest"):
        OrtRuntime(folder, loaded.manifest)
    # A manifest naming a sequence file outside the folder is refused.
    data = orjson.loads((folder / "manifest.json").read_bytes())
    data["sequence_file"] = "../x.onnx"
    (folder / "manifest.json").write_bytes(orjson.dumps(data))
    assert "g/1" in ModelRegistry(tmp_path).errors


def test_predict_in_one_call_equals_the_step_by_step_path(tmp_path: Path) -> None:
    spec = SPECS["gru2-tf"]
    write_model(tmp_path, spec)
    reg = ModelRegistry(tmp_path)
    rt = reg.get("g").runtime
    x, tf = _history(spec, 1, 400)
    ts = (T0 + np.arange(400, dtype=np.int64) * C).tolist()
    values = [[None if np.isnan(v) else float(v) for v in row] for row in x[0]]
    got = predict(reg, "g", None, values, ts)
    state = np.zeros((1, reg.get("g").manifest.state_size), np.float32)
    fc = sc = None
    for t in range(400):  # the old path: a call per history step
        fc, sc, state = rt.step(x[:, t], state, None if tf is None else tf[:, t])
    assert fc is not None and sc is not None and got.scale is not None
    assert np.abs(np.array(got.mean) - fc[0]).max() <= 1e-4
    assert np.abs(np.array(got.scale) - sc[0]).max() <= 1e-4


def test_replay_equals_stepping_each_reading(tmp_path: Path) -> None:
    spec = SPECS["gru2-tf"]
    write_model(tmp_path, spec)
    loaded = ModelRegistry(tmp_path).get("g")
    table = ModelTable(loaded)
    table.grow(4)
    rows = np.array([1, 3], np.intp)
    table.state[rows] = 0.2
    x, _ = _history(spec, 2, 12, seed=3)
    ts = np.array([T0, T0 + C], np.int64)
    start = table.state[rows].copy()
    table.replay(rows, x, ts)
    tf = kit_time_features(ts, spec)
    state = start
    fc = None
    for r in range(12):
        fc, _, state = loaded.runtime.step(x[:, r], state, tf)
    assert fc is not None
    assert np.abs(table.state[rows] - state).max() <= 1e-4
    assert np.abs(table.fc[rows] - fc).max() <= 1e-4
