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
from tools.seqform import build_scan, build_sequence, sequence_kind  # noqa: E402
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
     ("seq2seq-lstm", "ema", 4, 0), ("peephole", "ema", 4, 2), ("jordan", "fixed", 8, 2),
     ("grid-rowlstm", "fixed", 0, 2), ("seq2seq-attn-gru", "fixed", 0, 0)],
)
def test_sequence_form_equals_rolling_the_step_graph(tmp_path: Path, cell: str, scaling: str, lags: int,
                                                     n_time: int) -> None:
    try:
        grid = {"grid": (1, 2)} if cell == "grid-rowlstm" else {}  # a 1x2 "sensor array": the two features
        net = StepNet(ModelConfig(cell=cell, hidden=12, layers=2, horizon=5, lags=lags, scaling=scaling,
                                  dropout=0.0, **grid), 2, n_time, MEAN, STD)
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
    blob = build_sequence(path.read_bytes())
    # The recurrence in one native RNN op where the cell allows it (tools/seqnative.py; the
    # grid's row LSTM works within a frame, only its GRU across frames is recurrent);
    # jordan feeds its output back, so it keeps the Scan over the step graph.
    # Attention rotates its ring of encoder states every step: the native form is built,
    # disagrees with rolling the step graph, and the check ships the Scan form instead.
    assert sequence_kind(blob) == ("scan" if cell in ("jordan", "seq2seq-attn-gru") else "native")
    seq = _session(blob)
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


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_native_form_over_one_two_and_three_steps(tmp_path: Path, cell: str) -> None:
    """Short histories (T = 1 skips the recurrence) and a long NaN run at the start, from
    a non-zero state, with running statistics, lags and time features; equal to the Scan form."""
    net = StepNet(ModelConfig(cell=cell, hidden=8, layers=2, horizon=3, lags=4, scaling="ema", dropout=0.0),
                  2, 1, MEAN, STD)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    net.trained = True
    path = tmp_path / "model.onnx"
    to_onnx(net, path)
    native, scan = _session(build_sequence(path.read_bytes())), _session(build_scan(path.read_bytes()))
    rng = np.random.default_rng(2)
    state = rng.uniform(0, 2, (2, net.state_size)).astype(np.float32)
    for t in (1, 2, 3, 40):
        x = (np.array(MEAN) + np.array(STD) * rng.standard_normal((2, t, 2))).astype(np.float32)
        x[1, : t // 2 + 1] = np.nan
        feed = {"x": x, "state": state, "tf": rng.uniform(-1, 1, (2, t, 1)).astype(np.float32)}
        for a, b in zip(native.run(None, feed), scan.run(None, feed), strict=True):
            assert np.abs(a - b).max() <= 1e-4 * max(1.0, float(np.abs(b).max()))


def test_a_native_form_that_disagrees_falls_back_to_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tools.seqnative

    net = StepNet(ModelConfig(cell="gru", hidden=4, horizon=2, dropout=0.0), 1, 0, [0.0], [1.0])
    net.trained = True
    path = tmp_path / "model.onnx"
    to_onnx(net, path)
    assert sequence_kind(build_sequence(path.read_bytes())) == "native"
    monkeypatch.setattr(tools.seqnative, "check", lambda step, seq: 1.5)  # 1.5x what is allowed
    assert sequence_kind(build_sequence(path.read_bytes())) == "scan"


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
    assert rt.sequence_source == "shipped" and rt.sequence_form == "native"
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
