"""The grid model (cell grid-rowlstm, training/grid.py): ONNX parity over a long rollout
with NaNs and a dead pixel, the grid shape checks, and a tiny model trained on simulated
8x8 frames, exported and run by the engine as one multivariate (device) stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from service.errors import ModelError  # noqa: E402
from service.metrics import Metrics  # noqa: E402
from service.records import NS_PER_S, Reading, StreamKey  # noqa: E402
from service.runtime.manifest import load_manifest  # noqa: E402
from service.runtime.registry import ModelRegistry  # noqa: E402
from service.streams.engine import Engine  # noqa: E402
from tests.modelkit import settings_for  # noqa: E402
from tools.sim.grid import GridSpec, frames  # noqa: E402
from training.config import Config, DataConfig, ModelConfig, TrainConfig  # noqa: E402
from training.data import DataError, Dataset, Series  # noqa: E402
from training.export import export, parity, to_onnx  # noqa: E402
from training.nets import StepNet  # noqa: E402
from training.trainer import assess, train  # noqa: E402

pytestmark = pytest.mark.artefact
SPEC = GridSpec(rows=4, cols=5, dead=(1, 3), dead_after_step=150)  # not square: rows and columns stay apart


def _frames(n: int) -> np.ndarray:
    return frames(SPEC, 0, n, seed=3)[1].astype(np.float32)


@pytest.mark.parametrize(("scaling", "n_time", "layers"), [("fixed", 0, 1), ("ema", 2, 2)])
def test_grid_parity_over_long_rollout_with_a_dead_pixel(tmp_path: Path, scaling: str, n_time: int,
                                                         layers: int) -> None:
    v = _frames(500)
    assert np.isnan(v[200:, 1 * 5 + 3]).all()  # the dead pixel reads NaN in the rollout
    cfg = ModelConfig(cell="grid-rowlstm", grid=(4, 5), hidden=16, layers=layers, horizon=6, scaling=scaling,
                      dropout=0.2)
    net = StepNet(cfg, 20, n_time, np.nanmean(v, 0).tolist(), np.nanstd(v, 0).tolist())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights everywhere (heads start at zero): parity tests the whole graph
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    net.trained = True
    to_onnx(net, tmp_path / "g.onnx")
    tf = np.random.default_rng(1).uniform(-1, 1, (500, n_time)).astype(np.float32) if n_time else None
    p = parity(net, tmp_path / "g.onnx", v, tf, steps=400)  # 5 % more NaNs sprinkled in
    assert p.gap <= 1e-4 and p.excess <= 1.0, p
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    feed = {"x": v[:7], "state": np.zeros((7, net.state_size), np.float32)}
    if n_time:
        feed["tf"] = np.zeros((7, n_time), np.float32)
    fc, sc, st = sess.run(None, feed)  # the step contract: x [B, H*W], forecast [B, H, H*W]
    assert fc.shape == (7, 6, 20) and sc.shape == (7, 6, 20) and st.shape == (7, net.state_size)


def test_grid_shape_must_fold_the_features() -> None:
    with pytest.raises(DataError, match="grid 4x4 has 16 pixels but the data has 20 features"):
        StepNet(ModelConfig(cell="grid-rowlstm", grid=(4, 4)), 20, 0, [0.0] * 20, [1.0] * 20)
    with pytest.raises(ValueError, match=r"needs model\.grid"):
        from training.config import from_dict

        from_dict({"model": {"cell": "grid-rowlstm"}})


def _dataset(n: int) -> Dataset:
    ts, v = frames(SPEC, 1_700_000_000 * NS_PER_S, n, seed=3)
    return Dataset(tuple(SPEC.names), SPEC.cadence_s, (Series(SPEC.device, ts, v.astype(np.float32)),), "sim")


def test_engine_serves_a_trained_grid_model_as_one_device_stream(tmp_path: Path) -> None:
    cfg = Config(
        name="grid", version="1",
        data=DataConfig(source="sim", time_features=(), serve=("ir*",)),
        model=ModelConfig(cell="grid-rowlstm", grid=(4, 5), hidden=8, horizon=3, dropout=0.0),
        train=TrainConfig(epochs=2, batch=4, chunk=8, strand=32, progress=False),
    )
    t = train(cfg, _dataset(400))
    ex = export(t, tmp_path / "models", {"val": assess(t, "val")})
    m = load_manifest(ex.folder)
    assert m.grid == [4, 5] and m.features[:6] == ["r0c0", "r0c1", "r0c2", "r0c3", "r0c4", "r1c0"]
    assert m.cell == "grid-rowlstm" and ex.parity <= 1e-4
    # The engine needs nothing new: a multivariate model with 20 features, fed per pixel.
    s = settings_for(tmp_path, tmp_path / "models", streams={"close_grace_s": 1.0})
    eng = Engine(s, ModelRegistry(tmp_path / "models"), None, Metrics())
    start = 1_800_000_000 * NS_PER_S
    ts, v = frames(SPEC, start, 40, seed=4, start_step=140)  # the pixel dies at step 150: NaN, left out
    step_ns = round(SPEC.cadence_s * NS_PER_S)
    for i in range(40):
        eng.accept([Reading(StreamKey(SPEC.device, name), int(ts[i]), float(x))
                    for name, x in zip(SPEC.names, v[i], strict=True) if x == x])
        eng.tick(int(ts[i]) + 2 * NS_PER_S)
    eng.tick(int(ts[-1]) + step_ns + 2 * NS_PER_S)
    status = eng.stream(SPEC.device)
    assert status is not None and status.quantity == "*" and status.model == "grid"
    assert status.warm_have == status.warm_need and status.status in ("ok", "firing")
    fc = eng.forecast(SPEC.device)
    assert fc is not None and fc.features == tuple(SPEC.names) and len(fc.mean) == 3
    assert np.isfinite(np.array(fc.mean)).all()
    # GET /v1/models says it is a grid (the dashboard draws a heat map)
    from service.api.routes.models import _model_out

    assert [(mi.grid, _model_out(mi).grid) for mi in eng.models()] == [((4, 5), [4, 5])]


def test_manifest_refuses_a_grid_that_does_not_fold_the_features(tmp_path: Path) -> None:
    from tests.modelkit import KitSpec, write_model

    write_model(tmp_path, KitSpec(name="g", features=("a", "b", "c")), grid=[2, 2])
    with pytest.raises(ModelError, match="does not fold 3 features"):
        load_manifest(next((tmp_path / "g").iterdir()))


def test_pixels_are_put_in_row_major_order_whatever_the_source_order() -> None:
    from training.grid import row_major

    names = [f"r{r}c{c}" for r in range(11) for c in range(2)]
    ts = np.arange(3, dtype=np.int64)
    v = np.arange(3 * 22, dtype=np.float32).reshape(3, 22)
    order = sorted(range(22), key=lambda i: names[i])  # as the store lists them: "r10c0" before "r2c0"
    ds = Dataset(tuple(names[i] for i in order), 60.0, (Series("ir", ts, v[:, order]),), "store")
    out = row_major(ds, (11, 2))
    assert out.features == tuple(names)
    np.testing.assert_array_equal(out.series[0].values, v)
    other = Dataset(("a", "b"), 60.0, (Series("x", ts, v[:, :2]),), "csv")
    assert row_major(other, (1, 2)) is other  # other names: the order given
    with pytest.raises(DataError, match=r"missing \['r1c1'\]"):
        row_major(Dataset(names[:3], 60.0, (Series("ir", ts, v[:, :3]),), "csv"), (2, 2))


def test_a_hot_spot_on_one_pixel_fires_an_alert_naming_it(tmp_path: Path) -> None:
    cfg = Config(
        name="grid", version="1", data=DataConfig(source="sim", time_features=(), serve=("ir*",)),
        model=ModelConfig(cell="grid-rowlstm", grid=(4, 5), hidden=16, horizon=3, dropout=0.0),
        train=TrainConfig(epochs=3, batch=4, chunk=16, strand=64, progress=False),
    )
    t = train(cfg, _dataset(1500))
    export(t, tmp_path / "models", {"val": assess(t, "val")}, false_alerts_per_day=0.024)  # calibrated thresholds
    eng = Engine(settings_for(tmp_path, tmp_path / "models", streams={"close_grace_s": 1.0}),
                 ModelRegistry(tmp_path / "models"), None, Metrics())
    ts, v = frames(SPEC, 1_800_000_000 * NS_PER_S, 110, seed=4, start_step=300)
    v[100:, 7] += 15.0  # r1c2 jumps 15 degC (a new hot spot) at frame 100
    fired = []
    for i in range(110):
        eng.accept([Reading(StreamKey(SPEC.device, n), int(ts[i]), float(x))
                    for n, x in zip(SPEC.names, v[i], strict=True) if x == x])
        eng.tick(int(ts[i]) + 2 * NS_PER_S)
        status = eng.stream(SPEC.device)
        assert status is not None
        if status.status == "firing":
            fired.append((i, status.feature))
    assert fired and fired[0] == (100, "r1c2"), fired  # no false alert before, the pixel named
    alerts = [(a.state, a.quantity, a.check) for a in eng.recent_alerts(10)]
    assert ("firing", "r1c2", "anomaly") in alerts and {q for _, q, _ in alerts} == {"r1c2"}, alerts
