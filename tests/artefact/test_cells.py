"""The custom cells (training/cells.py): what they compute, and a trained one in the engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from service.metrics import Metrics  # noqa: E402
from service.records import Reading, StreamKey  # noqa: E402
from service.runtime.manifest import load_manifest  # noqa: E402
from service.runtime.registry import ModelRegistry  # noqa: E402
from service.store.memory import MemoryStore  # noqa: E402
from service.streams.engine import Engine  # noqa: E402
from tests.modelkit import settings_for  # noqa: E402
from training.cells import PeepholeLSTM  # noqa: E402
from training.config import Config, DataConfig, ModelConfig, TrainConfig  # noqa: E402
from training.data import Dataset, Series  # noqa: E402
from training.export import export  # noqa: E402
from training.nets import StepNet  # noqa: E402
from training.trainer import assess, train  # noqa: E402

pytestmark = pytest.mark.artefact


def test_peephole_lstm_without_peepholes_is_torch_lstm() -> None:
    torch.manual_seed(0)
    ref = torch.nn.LSTM(5, 7, num_layers=2, batch_first=True)
    mine = PeepholeLSTM(5, 7, 2, 0.0)
    with torch.no_grad():
        for i, layer in enumerate(mine.layers):
            layer.weight_ih.copy_(getattr(ref, f"weight_ih_l{i}"))
            layer.weight_hh.copy_(getattr(ref, f"weight_hh_l{i}"))
            layer.bias.copy_(getattr(ref, f"bias_ih_l{i}") + getattr(ref, f"bias_hh_l{i}"))
        x = torch.randn(3, 11, 5)
        h0, c0 = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
        want, (wh, wc) = ref(x, (h0, c0))
        got, (gh, gc) = mine(x, (h0, c0))
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        torch.testing.assert_close((gh, gc), (wh, wc), atol=1e-6, rtol=0)
        # with peepholes the gates read the cell state: the output changes
        for layer in mine.layers:
            layer.peep.fill_(0.5)
        assert (mine(x, (h0, c0))[0] - want).abs().max() > 1e-3


def test_jordan_state_carries_the_normalised_one_step_forecast() -> None:
    mean, std = [20.0, -1.0], [3.0, 0.5]
    net = StepNet(ModelConfig(cell="jordan", hidden=8, layers=2, horizon=4, lags=3), 2, 0, mean, std)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    net.eval()
    x = torch.tensor(np.array(mean) + np.array(std) * np.random.default_rng(0).normal(size=(2, 9, 2)),
                     dtype=torch.float32)
    with torch.no_grad():
        fc, _, st = net.seq(x, None, net.initial_state(2))
        per = net.cfg.layers * net.cfg.hidden
        fed = st[:, per : per + 2]  # after h: the fed-back forecast
        want = torch.clamp((fc[:, -1, 0] - torch.tensor(mean)) / torch.tensor(std), -10, 10)
        torch.testing.assert_close(fed, want, atol=1e-5, rtol=0)
        # and the feedback is read: the same inputs with another fed-back value forecast otherwise
        st2 = st.clone()
        st2[:, per : per + 2] += 1.0
        a, _, _ = net.seq(x[:, :1], None, st)
        b, _, _ = net.seq(x[:, :1], None, st2)
        assert (a - b).abs().max() > 1e-4


def _sine(n: int = 900) -> Dataset:
    rng = np.random.default_rng(0)
    t = np.arange(n)
    v = (20 + 3 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.2, n)).astype(np.float32)[:, None]
    v[rng.random(v.shape) < 0.02] = np.nan
    ts = (1_700_000_000 + 3600 * t).astype(np.int64) * 1_000_000_000
    return Dataset(("value",), 3600.0, (Series("s", ts, v),), "synthetic sine")


@pytest.mark.parametrize("cell", ["peephole", "jordan"])
def test_trained_cell_exports_and_runs_in_the_engine(tmp_path: Path, cell: str) -> None:
    cfg = Config(
        name=f"sine-{cell}", version="t1",
        data=DataConfig(source="synthetic", time_features=("hour_sin", "hour_cos")),
        model=ModelConfig(cell=cell, hidden=16, horizon=6, lags=0, dropout=0.0),
        train=TrainConfig(epochs=6, batch=4, chunk=12, strand=72, lr=1e-2, progress=False, patience=6),
    )
    t = train(cfg, _sine(900))
    a = {"val": assess(t, "val"), "test": assess(t, "test")}
    assert a["test"].model.mse < a["test"].repeat_last.mse  # it learned something of the sine
    ex = export(t, tmp_path / "models", a)
    m = load_manifest(ex.folder)
    assert m.cell == cell and m.kind == "step" and m.state_size == t.net.state_size and ex.parity <= 1e-4
    assert m.sequence_file  # the sequence form (an ONNX Scan over the step) ships beside it
    # The service runs it: live readings through the engine's model table, then the
    # stateless predict (the sequence form) over the same history agrees with the live forecast.
    eng = Engine(settings_for(tmp_path, tmp_path / "models", streams={"warmup_wait_s": 30.0}),
                 ModelRegistry(tmp_path / "models"), MemoryStore(), Metrics())
    key = StreamKey("dev", "value")
    c = 3600 * 10**9
    t0 = 1_700_000_000 // 3600 * c
    vals = 20 + 3 * np.sin(2 * np.pi * np.arange(60) / 24)
    for i, v in enumerate(vals):
        eng.accept([Reading(key, t0 + i * c, float(v))])
        eng.tick(t0 + i * c)
    live = eng.forecast("dev/value")
    assert live is not None and np.isfinite(live.mean).all()
    offline = eng.predict(m.name, None, [[float(v)] for v in vals], [t0 + i * c for i in range(60)])
    assert np.abs(np.array(live.mean) - np.array(offline.mean)).max() <= 1e-4
