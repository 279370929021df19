"""seq2seq-attn: ring-buffer attention in the state, ONNX parity, masking, the engine and the backtest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from tests.artefact.test_export import MEAN, STD, _random_weights, _signal  # noqa: E402  (the parity fixtures)
from training.config import ModelConfig  # noqa: E402
from training.export import to_onnx  # noqa: E402
from training.nets import StepNet  # noqa: E402

pytestmark = pytest.mark.artefact
K = 12  # small, so a 400-step rollout wraps the ring many times


@pytest.mark.parametrize(("cell", "scaling", "lags", "n_time", "horizon"),
                         [("seq2seq-attn-gru", "fixed", 8, 2, 5), ("seq2seq-attn-lstm", "ema", 0, 0, 5),
                          ("seq2seq-attn-gru", "ema", 0, 2, 16)])  # H >= K: keys projected, not queries
def test_attention_step_parity_over_long_rollout(tmp_path: Path, cell: str, scaling: str, lags: int,
                                                  n_time: int, horizon: int) -> None:
    cfg = ModelConfig(cell=cell, hidden=16, layers=2, horizon=horizon, lags=lags, scaling=scaling, dropout=0.2,
                      attn_window=K)
    net = StepNet(cfg, 2, n_time, MEAN, STD)
    _random_weights(net)
    path = tmp_path / "m.onnx"
    to_onnx(net, path)
    T = 400
    x = _signal(T)
    tf = np.random.default_rng(2).uniform(-1, 1, (3, T, n_time)).astype(np.float32)
    with torch.no_grad():
        fc_t, sc_t, st_t = net.seq(torch.from_numpy(x), torch.from_numpy(tf) if n_time else None, net.initial_state(3))
        att_t = net.attention.flip(-1).numpy()  # (B, T, H, K) oldest first -> by lag
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["forecast", "scale", "state_out", "attention"]
    state = np.zeros((3, net.state_size), np.float32)
    worst = worst_att = 0.0
    for i in range(T):
        feed = {"x": x[:, i], "state": state}
        if n_time:
            feed["tf"] = tf[:, i]
        fc, sc, state, att = sess.run(None, feed)
        assert att.shape == (3, horizon, K)
        worst = max(worst, float(np.abs(fc - fc_t[:, i].numpy()).max()), float(np.abs(sc - sc_t[:, i].numpy()).max()))
        worst_att = max(worst_att, float(np.abs(att - att_t[:, i]).max()))
    assert worst <= 1e-4, f"{cell}: ONNX step rollout drifts from torch by {worst}"
    assert worst_att <= 1e-5
    assert np.abs(state - st_t.numpy()).max() <= 1e-4
    assert np.isfinite(fc).all() and (sc > 0).all()


def test_unwritten_slots_get_no_weight_and_the_ring_shifts() -> None:
    cfg = ModelConfig(cell="seq2seq-attn-gru", hidden=8, horizon=4, attn_window=6)
    net = StepNet(cfg, 2, 0, MEAN, STD)
    _random_weights(net, seed=3)
    x = torch.from_numpy(_signal(10, B=2)[:, :, :])
    state = net.initial_state(2)
    with torch.no_grad():
        for t in range(10):
            _, _, state = net.seq(x[:, t : t + 1], None, state)
            w = net.attention[:, 0].flip(-1)  # (B, H, K) by lag
            seen = min(t + 1, 6)
            assert torch.all(w[..., seen:] == 0), f"step {t}: weight on lags not yet seen"
            assert torch.all(w[..., :seen] > 0)
            torch.testing.assert_close(w.sum(-1), torch.ones(2, 4))
            assert float(state[0, -1]) == seen  # the validity count, capped at K
        # The ring's newest slot is the encoder's top output of the step just fed.
        ring = state[:, -(6 * 8 + 1) : -1].reshape(2, 6, 8)
        torch.testing.assert_close(ring[:, -1], state[:, :8])


def test_chunked_training_path_equals_step_by_step() -> None:
    """seq() over T steps with positions (training) sees the same windows as T single steps."""
    cfg = ModelConfig(cell="seq2seq-attn-lstm", hidden=8, horizon=3, attn_window=5, lags=4)
    net = StepNet(cfg, 2, 0, MEAN, STD)
    _random_weights(net, seed=4)
    x = torch.from_numpy(_signal(23, B=2))
    with torch.no_grad():
        fc_all, _, st_all = net.seq(x, None, net.initial_state(2), positions=torch.tensor([0, 4, 9, 22]))
        state = net.initial_state(2)
        steps = []
        for t in range(23):
            fc, _, state = net.seq(x[:, t : t + 1], None, state)
            steps.append(fc[:, 0])
    torch.testing.assert_close(fc_all, torch.stack(steps, 1)[:, [0, 4, 9, 22]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(st_all, state, atol=1e-6, rtol=1e-6)


def test_attention_window_is_validated() -> None:
    from training.config import Config, validate

    with pytest.raises(ValueError, match="attn_window"):
        validate(Config(model=ModelConfig(cell="seq2seq-attn-gru", attn_window=0)))


def _sine_dataset(n: int) -> tuple[object, np.ndarray, np.ndarray]:
    from training.data import Dataset, Series

    rng = np.random.default_rng(0)
    t = np.arange(n)
    v = np.stack([20 + 3 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.2, n),
                  -1 + 0.5 * np.cos(2 * np.pi * t / 24) + rng.normal(0, 0.05, n)], axis=1).astype(np.float32)
    v[rng.random(v.shape) < 0.02] = np.nan
    ts = (1_700_000_000 + 3600 * t).astype(np.int64) * 1_000_000_000
    return Dataset(("a", "b"), 3600.0, (Series("s", ts, v),), "synthetic sine"), ts, v


def test_trained_attention_model_runs_in_the_engine_and_the_backtest_names_its_lags(tmp_path: Path) -> None:
    import csv
    import json

    from service.backtest import backtest_frame, write_rows
    from service.runtime.registry import ModelRegistry
    from training.config import Config, DataConfig, TrainConfig
    from training.export import export
    from training.trainer import assess, train

    ds, ts, v = _sine_dataset(1000)
    cfg = Config(
        name="sine-attn", version="t1", data=DataConfig(source="synthetic", time_features=("hour_sin", "hour_cos")),
        model=ModelConfig(cell="seq2seq-attn-gru", hidden=16, horizon=6, attn_window=24, dropout=0.0),
        train=TrainConfig(epochs=6, batch=4, chunk=12, strand=72, lr=1e-2, progress=False, patience=10),
    )
    t = train(cfg, ds)  # type: ignore[arg-type]
    a = {"val": assess(t, "val"), "test": assess(t, "test")}
    assert a["test"].model.mse < a["test"].repeat_last.mse
    ex = export(t, tmp_path / "models", a)
    assert ex.parity <= 1e-4 and ex.manifest.cell == "seq2seq-attn-gru"
    assert ex.manifest.state_size == t.net.state_size

    registry = ModelRegistry(tmp_path / "models")
    start = 700  # the test rows, through a fresh engine (ModelTable on onnxruntime)
    rows = backtest_frame(registry, "sine-attn", ts[start:].tolist(), v[start:].tolist(), ["a", "b"],
                          attention=True)
    assert len(rows) == len(ts) - start and {r.stream for r in rows} == {"backtest"}
    scored = [r for r in rows if r.expected is not None]
    assert len(scored) > 200 and all(np.isfinite(r.expected) for r in scored)  # type: ignore[arg-type]
    # The first row's forecast had seen one step: it can only have looked at lag 0.
    assert rows[0].attention == ((0, pytest.approx(1.0)),)
    for r in rows[30:]:
        assert 1 <= len(r.attention) <= 3
        lags = [lag for lag, _ in r.attention]
        weights = [w for _, w in r.attention]
        assert all(0 <= lag < 24 for lag in lags) and weights == sorted(weights, reverse=True)
        assert 0 < sum(weights) <= 1 + 1e-6
    out = tmp_path / "bt.csv"
    write_rows(rows, out, attention=True)
    with out.open() as f:
        table = list(csv.DictReader(f))
    assert json.loads(table[50]["attention"]) == [[lag, w] for lag, w in rows[50].attention]
    # Without the flag the output keeps its columns.
    write_rows(rows, out)
    assert "attention" not in out.read_text().splitlines()[0]


def test_backtest_attention_refuses_a_model_that_does_not_attend(tmp_path: Path) -> None:
    from service.errors import ModelError
    from service.runtime.explain import AttentionReplay
    from training.config import Config, DataConfig, TrainConfig
    from training.export import export
    from training.trainer import assess, train

    ds, _, _ = _sine_dataset(400)
    cfg = Config(name="plain", version="t1", data=DataConfig(source="synthetic", time_features=()),
                 model=ModelConfig(cell="seq2seq-gru", hidden=8, horizon=4),
                 train=TrainConfig(epochs=1, batch=4, chunk=12, strand=48, progress=False))
    t = train(cfg, ds)  # type: ignore[arg-type]
    ex = export(t, tmp_path / "models", {"val": assess(t, "val")})
    with pytest.raises(ModelError, match="no 'attention' output"):
        AttentionReplay(ex.folder)


def test_query_and_key_projection_give_the_same_weights() -> None:
    import math

    from training.attention import RingAttention

    torch.manual_seed(0)
    att = RingAttention(hidden=8, window=5)
    with torch.no_grad():
        att.lag_bias.copy_(torch.randn(5))
    dec, window = torch.randn(4, 3, 8), torch.randn(4, 5, 8)  # H=3 < K=5: queries projected
    valid = torch.ones(4, 5, dtype=torch.bool)
    valid[0, :2] = False
    _, w = att(dec, window, valid)
    scores = torch.matmul(dec, att.key(window).transpose(1, 2)) / math.sqrt(8) + att.lag_bias
    ref = torch.softmax(torch.where(valid[:, None], scores, torch.tensor(-1e9)), dim=-1)
    torch.testing.assert_close(w, ref, atol=1e-6, rtol=1e-5)
    assert torch.all(w[0, :, :2] == 0)
