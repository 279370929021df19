"""Detectors are online (a score never depends on later rows) and the persistence model
obeys the model contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluation.nab.corpus import DataFile
from evaluation.nab.detectors import ResidualDetector, windowed_gaussian
from evaluation.nab.live import LiveConfig, run_live
from evaluation.nab.persistence import write_model
from service.runtime.manifest import load_manifest
from service.runtime.session import OrtRuntime

T0 = np.datetime64("2020-01-01T00:00:00", "s")


def series(n: int, seed: int, spike_at: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = 50 + 10 * np.sin(np.arange(n) / 20) + rng.normal(0, 1, n)
    if spike_at is not None:
        v[spike_at] += 80
    return v


def as_file(name: str, v: np.ndarray) -> DataFile:
    return DataFile(name, T0 + np.arange(len(v)) * np.timedelta64(300, "s"), v, ())


def test_windowed_gaussian_is_online_and_flags_a_spike() -> None:
    v = series(900, 1, spike_at=700)
    full = windowed_gaussian(v, window=200, step=10)
    prefix = windowed_gaussian(v[:500], window=200, step=10)
    np.testing.assert_array_equal(full[:500], prefix)
    assert full[700] > 0.999 and full[700] == full.max()


def test_persistence_model_follows_the_contract(tmp_path: Path) -> None:
    folder = write_model(tmp_path)
    m = load_manifest(folder)  # hash and schema checked
    rt = OrtRuntime(folder, m)
    x = np.array([[1.5], [np.nan], [-2.0]], np.float32)  # (B, F)
    state = np.array([[0.0], [7.0], [3.0]], np.float32)  # (B, S)
    fc, scale, state_out = rt.step(x, state, None)
    assert fc.shape == (3, 1, 1) and scale is None
    np.testing.assert_array_equal(fc[:, 0, 0], [1.5, 7.0, -2.0])  # NaN carries the last value
    np.testing.assert_array_equal(state_out[:, 0], [1.5, 7.0, -2.0])


def test_live_detector_is_online_per_stream_and_flags_a_spike(tmp_path: Path) -> None:
    folder = write_model(tmp_path)
    cfg = LiveConfig(learning_steps=100)
    a = as_file("c/a.csv", series(1200, 2, spike_at=1000))
    b = as_file("c/b.csv", series(700, 3))
    both = run_live([a, b], folder, cfg)
    alone = run_live([as_file("c/a.csv", a.values[:800])], folder, cfg)
    # Lockstep batching with another stream, and rows after t, never change row t's score.
    np.testing.assert_allclose(both["c/a.csv"][:800], alone["c/a.csv"], rtol=0, atol=1e-12)
    s = both["c/a.csv"]
    assert ((s >= 0) & (s <= 1)).all()
    assert s[1000] == s[100:].max() and s[1000] > 0.9
    assert both["c/b.csv"].shape == (700,)


def test_residual_detector_twin_scores_in_unit_interval() -> None:
    s = ResidualDetector()(series(1000, 4, spike_at=900))
    assert s.shape == (1000,) and ((s >= 0) & (s <= 1)).all()
    assert s[900] == pytest.approx(s.max())


def test_engine_path_gives_the_same_scores_as_the_direct_path(tmp_path: Path) -> None:
    from evaluation.nab.engine_run import run_engine

    folder = write_model(tmp_path)
    # Default LiveConfig == the engine's surprise scorer with nab_settings(): the engine's own
    # score column must equal the direct runtime + SurpriseScorer path.
    files = [as_file("c/a.csv", series(400, 5, spike_at=300)), as_file("c/b.csv", series(250, 6))]
    direct = run_live(files, folder, LiveConfig())
    engine = run_engine(files, folder)
    for f in files:
        # 1e-6: the engine's table holds the fed values in float32, the direct path in float64.
        np.testing.assert_allclose(engine[f.name], direct[f.name], rtol=0, atol=1e-6)
        assert engine[f.name][:200].max() == 0.0  # learning steps: no verdicts
    assert engine["c/a.csv"][300] == engine["c/a.csv"][200:].max() > 0.9


def test_nab_scorer_uses_the_model_scale_when_given() -> None:
    from evaluation.nab.live import NabScorer

    cfg = LiveConfig(learning_steps=10, min_residuals=5, range_tolerance=1e12)  # residual path only
    learnt, told = NabScorer(1, cfg), NabScorer(1, cfg)
    rows = np.array([0])
    v = series(120, 7, spike_at=100)
    out_l, out_t = [], []
    for t in range(1, 120):
        a, e = v[t : t + 1], v[t - 1 : t]
        out_l.append(learnt.update(rows, a, e)[0])
        # The model "expected" a wild step exactly at the spike: a huge predicted spread there.
        scale = np.array([1e6 if t == 100 else 1.0])
        out_t.append(told.update(rows, a, e, scale=scale)[0])
    assert out_l[99] > out_l[98]  # row 100: the spike raises the score (learnt-spread units)
    assert out_t[99] < out_t[98]  # in units of the predicted spread it is no surprise at all
