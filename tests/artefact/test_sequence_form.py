"""The sequence form of exported StepNets (tools/seqform.py): one call over a long history
with NaNs and a gap equals rolling the exported step graph, within 1e-4 train-std units,
for every base cell, both scalings, lags and time features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from service.runtime.manifest import read_model  # noqa: E402
from service.runtime.session import OrtRuntime, roll  # noqa: E402
from tools.seqform import build_sequence  # noqa: E402
from training.config import ModelConfig  # noqa: E402
from training.export import export, to_onnx  # noqa: E402
from training.nets import StepNet  # noqa: E402
from training.trainer import assess, train  # noqa: E402

pytestmark = pytest.mark.artefact
MEAN, STD = [20.0, -1.0], [3.0, 0.5]


def _session(blob: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(blob, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    ("cell", "scaling", "lags", "n_time"),
    [("rnn", "fixed", 0, 0), ("gru", "ema", 0, 0), ("lstm", "fixed", 8, 2), ("gru", "fixed", 8, 2),
     ("seq2seq-lstm", "ema", 4, 0), ("peephole", "ema", 4, 2), ("jordan", "fixed", 8, 2)],
)
def test_sequence_form_equals_rolling_the_step_graph(tmp_path: Path, cell: str, scaling: str, lags: int,
                                                     n_time: int) -> None:
    try:
        net = StepNet(ModelConfig(cell=cell, hidden=12, layers=2, horizon=5, lags=lags, scaling=scaling,
                                  dropout=0.0), 2, n_time, MEAN, STD)
    except ValueError as e:  # a cell this tree's nets.py does not build yet
        pytest.skip(str(e))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights: zero heads would hide the forecast path
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    net.trained = True
    net.eval()
    path = tmp_path / "model.onnx"
    to_onnx(net, path)
    step = _session(path.read_bytes())
    seq = _session(build_sequence(path.read_bytes()))
    rng = np.random.default_rng(1)
    B, T = 3, 1500
    x = (np.array(MEAN) + np.array(STD) * rng.standard_normal((B, T, 2))).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    x[:, 300:340, 0] = np.nan  # a long gap
    tf = rng.uniform(-1, 1, (B, T, n_time)).astype(np.float32)
    state = np.zeros((B, net.state_size), np.float32)
    names = [o.name for o in step.get_outputs()]
    feed = {"x": x, "state": state} | ({"tf": tf} if n_time else {})
    got = dict(zip([o.name for o in seq.get_outputs()], seq.run(None, feed), strict=True))
    s = state
    for t in range(T):
        out = dict(zip(names, step.run(None, {"x": x[:, t], "state": s} | ({"tf": tf[:, t]} if n_time else {})),
                       strict=True))
        s = out["state_out"]
    std = np.array(STD, np.float32)
    assert np.abs(got["forecast"] - out["forecast"]).max(axis=(0, 1)).max() / std.min() <= 1e-4
    assert np.abs(got["scale"] - out["scale"]).max() / std.min() <= 1e-4
    assert np.abs(got["state_out"] - s).max() <= 1e-4
    assert np.isfinite(got["forecast"]).all()


def _trained():  # type: ignore[no-untyped-def]
    from tests.artefact.test_export import _sine_dataset
    from training.config import Config, DataConfig, TrainConfig

    cfg = Config(name="sine", version="t1", data=DataConfig(source="synthetic", time_features=("hour_sin",)),
                 model=ModelConfig(cell="gru", hidden=8, horizon=4, lags=4, dropout=0.0),
                 train=TrainConfig(epochs=1, batch=4, chunk=12, strand=48, progress=False))
    return train(cfg, _sine_dataset(400))


def test_export_ships_the_sequence_form(tmp_path: Path) -> None:
    t = _trained()
    ex = export(t, tmp_path / "models", {"val": assess(t, "val"), "test": assess(t, "test")})
    manifest, blob = read_model(ex.folder)
    assert manifest.sequence_file == "model.seq.onnx" and manifest.sequence_sha256 is not None
    rt = OrtRuntime(ex.folder, manifest, model_bytes=blob)
    assert rt.sequence_source == "shipped"
    x = np.full((2, 30, 2), 20.0, np.float32)
    x[:, ::3, 1] = np.nan
    tf = np.zeros((2, 30, 1), np.float32)
    state = np.zeros((2, manifest.state_size), np.float32)
    fc, _, st = rt.sequence(x, state, tf)
    fc1, _, st1 = roll(rt, x, state, tf)
    assert np.abs(fc - fc1).max() <= 1e-4 and np.abs(st - st1).max() <= 1e-4


def test_export_without_a_sequence_form_still_succeeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.export as export_mod

    def broken(folder: Path) -> str:
        (folder / "model.seq.onnx").write_bytes(b"half")
        raise ValueError("cannot wrap this graph")

    monkeypatch.setattr(export_mod, "ship_sequence", broken)
    t = _trained()
    with pytest.warns(UserWarning, match="no sequence form"):
        ex = export(t, tmp_path / "models", {"val": assess(t, "val"), "test": assess(t, "test")})
    manifest, blob = read_model(ex.folder)
    assert manifest.sequence_file is None and not (ex.folder / "model.seq.onnx").exists()
    assert OrtRuntime(ex.folder, manifest, model_bytes=blob).sequence_source == "none"
