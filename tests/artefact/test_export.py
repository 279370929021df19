"""ONNX export: checker, step parity with state fed back, window parity, refusals, manifest."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from service.errors import ModelError  # noqa: E402
from service.runtime.manifest import load_manifest  # noqa: E402
from training.config import Config, DataConfig, ModelConfig, TrainConfig  # noqa: E402
from training.data import Dataset, Series  # noqa: E402
from training.export import export, to_onnx  # noqa: E402
from training.nets import SegRNN, StepNet  # noqa: E402
from training.trainer import assess, train  # noqa: E402

pytestmark = pytest.mark.artefact
MEAN, STD = [20.0, -1.0], [3.0, 0.5]


def _random_weights(net: torch.nn.Module, seed: int = 0) -> None:
    # Exported nets start from zero heads (repeat-last); randomise so parity tests the whole graph.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    net.trained = True
    net.eval()


def _signal(T: int, B: int = 3, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(T)[None, :, None]
    x = np.array(MEAN) + np.array(STD) * (np.sin(t / 7.0 + rng.uniform(0, 6, (B, 1, 2))) + 0.3 * rng.normal(size=(B, T, 2)))
    x = x.astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan  # missing values go through the graph's mask
    x[:, 50:53, 0] = np.nan  # and a short gap
    return x


@pytest.mark.parametrize(
    ("cell", "scaling", "lags", "n_time"),
    [
        ("rnn", "fixed", 0, 0),
        ("lstm", "fixed", 8, 2),
        ("gru", "fixed", 8, 2),
        ("gru", "ema", 0, 0),
        ("lstm", "ema", 4, 2),
        ("seq2seq-gru", "fixed", 0, 2),
        ("seq2seq-lstm", "ema", 4, 0),
        ("peephole", "fixed", 8, 2),
        ("peephole", "ema", 0, 0),
        ("jordan", "fixed", 8, 2),
        ("jordan", "ema", 4, 0),
    ],
)
def test_step_parity_over_long_rollout(tmp_path: Path, cell: str, scaling: str, lags: int, n_time: int) -> None:
    cfg = ModelConfig(cell=cell, hidden=16, layers=2, horizon=5, lags=lags, scaling=scaling, dropout=0.2)
    net = StepNet(cfg, 2, n_time, MEAN, STD)
    _random_weights(net)
    path = tmp_path / "m.onnx"
    to_onnx(net, path)  # runs onnx.checker
    T = 400
    x = _signal(T)
    tf = np.random.default_rng(2).uniform(-1, 1, (3, T, n_time)).astype(np.float32)
    with torch.no_grad():
        fc_t, sc_t, st_t = net.seq(torch.from_numpy(x), torch.from_numpy(tf) if n_time else None, net.initial_state(3))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x", "state"] + (["tf"] if n_time else [])
    assert [o.name for o in sess.get_outputs()] == ["forecast", "scale", "state_out"]
    state = np.zeros((3, net.state_size), np.float32)
    worst = 0.0
    for i in range(T):
        feed = {"x": x[:, i], "state": state}
        if n_time:
            feed["tf"] = tf[:, i]
        fc, sc, state = sess.run(None, feed)
        assert fc.shape == (3, 5, 2) and sc.shape == (3, 5, 2)
        worst = max(worst, float(np.abs(fc - fc_t[:, i].numpy()).max()), float(np.abs(sc - sc_t[:, i].numpy()).max()))
    assert np.isfinite(fc).all() and (sc > 0).all()
    assert worst <= 1e-4, f"{cell}: ONNX step rollout drifts from torch by {worst}"
    # Relative where the state is large: an LSTM's cell state is unbounded (a random-weight
    # peephole LSTM reaches |c| ~ 240 in 400 steps) and float32 holds ~7 digits.
    st_ref = st_t.numpy()
    assert (np.abs(state - st_ref) <= 1e-4 * np.maximum(1.0, np.abs(st_ref))).all()


def test_step_graph_batch_is_dynamic(tmp_path: Path) -> None:
    net = StepNet(ModelConfig(cell="gru", hidden=8, horizon=3, lags=4), 2, 0, MEAN, STD)
    _random_weights(net)
    to_onnx(net, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for B in (1, 7, 300):
        x = np.full((B, 2), 20.0, np.float32)
        fc, _, st = sess.run(None, {"x": x, "state": np.zeros((B, net.state_size), np.float32)})
        assert fc.shape == (B, 3, 2) and st.shape == (B, net.state_size)
    # rows are independent: one stream's values never leak into another's row
    x = np.stack([np.full(2, 20.0), np.full(2, 99.0)]).astype(np.float32)
    a, _, _ = sess.run(None, {"x": x, "state": np.zeros((2, net.state_size), np.float32)})
    b, _, _ = sess.run(None, {"x": x[:1], "state": np.zeros((1, net.state_size), np.float32)})
    np.testing.assert_allclose(a[:1], b, atol=1e-6)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_window_parity(tmp_path: Path, bidirectional: bool) -> None:
    cfg = ModelConfig(cell="segrnn", hidden=16, horizon=10, window=24, segment=6, bidirectional=bidirectional)
    net = SegRNN(cfg, 2, MEAN, STD)
    _random_weights(net)
    to_onnx(net, tmp_path / "w.onnx")
    x = _signal(24, B=9)
    with torch.no_grad():
        fc_t, sc_t = net(torch.from_numpy(x))
    sess = ort.InferenceSession(str(tmp_path / "w.onnx"), providers=["CPUExecutionProvider"])
    fc, sc = sess.run(None, {"x": x})
    assert fc.shape == (9, 10, 2)
    assert np.abs(fc - fc_t.numpy()).max() <= 1e-4 and np.abs(sc - sc_t.numpy()).max() <= 1e-4


def test_export_refuses_untrained_network(tmp_path: Path) -> None:
    net = StepNet(ModelConfig(cell="gru", hidden=8, horizon=3), 2, 0, MEAN, STD)
    with pytest.raises(ModelError, match="untrained"):
        to_onnx(net, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_step_model_refuses_bidirectional() -> None:
    with pytest.raises(ValueError, match="bidirectional"):
        StepNet(ModelConfig(cell="lstm", bidirectional=True), 1, 0, [0.0], [1.0])


def _sine_dataset(n: int = 900) -> Dataset:
    rng = np.random.default_rng(0)
    t = np.arange(n)
    v = np.stack([20 + 3 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.2, n),
                  -1 + 0.5 * np.cos(2 * np.pi * t / 24) + rng.normal(0, 0.05, n)], axis=1).astype(np.float32)
    v[rng.random(v.shape) < 0.02] = np.nan
    ts = (1_700_000_000 + 3600 * t).astype(np.int64) * 1_000_000_000
    return Dataset(("a", "b"), 3600.0, (Series("s", ts, v),), "synthetic sine")


@pytest.mark.parametrize("cell", ["gru", "segrnn"])
def test_trained_model_beats_repeat_last_and_exports_a_valid_artefact(tmp_path: Path, cell: str) -> None:
    cfg = Config(
        name=f"sine-{cell}", version="t1",
        data=DataConfig(source="synthetic", time_features=("hour_sin", "hour_cos")),
        model=ModelConfig(cell=cell, hidden=24, horizon=12, lags=24, window=48, segment=12, dropout=0.0),
        # Small batches and short chunks: enough optimiser steps on a short series.
        train=TrainConfig(epochs=10, batch=4, chunk=12, strand=72, lr=1e-2, progress=False, patience=10),
    )
    t = train(cfg, _sine_dataset(1200))
    a = {"val": assess(t, "val"), "test": assess(t, "test")}
    # A clean daily sine: a trained model must beat repeat-last by a wide margin.
    assert a["test"].model.mse < 0.5 * a["test"].repeat_last.mse
    ex = export(t, tmp_path / "models", a)
    m = load_manifest(tmp_path / "models" / f"sine-{cell}" / "t1")
    assert m == ex.manifest and ex.parity <= 1e-4
    assert m.kind == ("window" if cell == "segrnn" else "step")
    assert m.features == ["a", "b"] and m.horizon == 12 and m.cadence_s == 3600.0
    assert m.metrics["test"]["mse"] < m.metrics["test"]["repeat_last_mse"]
    if cell == "gru":
        assert m.state_size == t.net.state_size and m.time_features == ["hour_sin", "hour_cos"]
    # the service's own runtime wrapper accepts the artefact
    from service.runtime.session import OrtRuntime

    rt = OrtRuntime(ex.folder, m)
    if m.kind == "step":
        fc, sc, st = rt.step(np.full((2, 2), 20.0, np.float32), np.zeros((2, m.state_size), np.float32),
                             np.zeros((2, 2), np.float32))
        assert st.shape == (2, m.state_size)
    else:
        fc, sc = rt.window(np.full((2, m.window or 0, 2), 20.0, np.float32), None)
    assert fc.shape == (2, 12, 2) and sc is not None and (sc > 0).all()
    # tampering with the graph is caught by the manifest's hash
    onnx_file = tmp_path / "models" / f"sine-{cell}" / "t1" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    with pytest.raises(ModelError, match="SHA-256"):
        load_manifest(onnx_file.parent)


def test_training_is_seeded_and_repeatable() -> None:
    cfg = Config(data=DataConfig(source="synthetic", time_features=()),
                 model=ModelConfig(cell="lstm", hidden=8, horizon=4),
                 train=TrainConfig(epochs=2, batch=8, chunk=16, strand=64, progress=False))
    ds = _sine_dataset(400)
    a, b = train(cfg, ds), train(cfg, ds)
    for (k, va), vb in zip(a.net.state_dict().items(), b.net.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    c = train(replace(cfg, train=replace(cfg.train, seed=1)), ds)
    assert not torch.equal(a.net.rnn.weight_ih_l0, c.net.rnn.weight_ih_l0)
