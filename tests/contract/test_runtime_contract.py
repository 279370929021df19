"""Every ModelRuntime implementation obeys the same contract (ORT and the numpy twin)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from service.runtime.manifest import load_manifest
from service.runtime.session import FunctionRuntime, ModelRuntime, OrtRuntime
from tests.modelkit import KitSpec, NumpyKitModel, write_model

STEP = KitSpec(name="s", layers=2, hidden=6, features=("a", "b"), time_features=("hour_sin", "hour_cos"), horizon=3)
WINDOW = KitSpec(name="w", kind="window", window=5, hidden=6, features=("a",), horizon=2)
RNN = KitSpec(name="r", cell="rnn", hidden=4, probabilistic=False)


def _ort(tmp: Path, spec: KitSpec) -> ModelRuntime:
    folder, _ = write_model(tmp, spec)
    return OrtRuntime(folder, load_manifest(folder))


def _twin(tmp: Path, spec: KitSpec) -> ModelRuntime:
    folder, weights = write_model(tmp, spec)
    model = NumpyKitModel(weights)
    manifest = load_manifest(folder)
    if spec.kind == "step":
        def step(x, s, tf):  # type: ignore[no-untyped-def]
            fc, sc, st = model.step(x, s, tf)
            return fc, (sc if spec.probabilistic else None), st

        return FunctionRuntime(manifest, step=step)
    return FunctionRuntime(manifest, window=model.window)


IMPLS: dict[str, Callable[[Path, KitSpec], ModelRuntime]] = {"ort": _ort, "numpy": _twin}


def _inputs(spec: KitSpec, b: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    f, k = len(spec.features), len(spec.time_features)
    shape = (b, f) if spec.kind == "step" else (b, spec.window, f)
    x = rng.standard_normal(shape).astype(np.float32)
    tf = rng.uniform(-1, 1, (*shape[:-1], k)).astype(np.float32) if k else None
    return x, tf


@pytest.fixture(params=sorted(IMPLS))
def impl(request: pytest.FixtureRequest) -> Callable[[Path, KitSpec], ModelRuntime]:
    return IMPLS[request.param]


@pytest.mark.parametrize("spec", [STEP, RNN], ids=["gru-tf", "rnn-point"])
def test_step_shapes_and_dtypes(impl, tmp_path: Path, spec: KitSpec) -> None:  # type: ignore[no-untyped-def]
    rt = impl(tmp_path, spec)
    m = rt.manifest
    for b in (1, 7):
        x, tf = _inputs(spec, b)
        fc, sc, st = rt.step(x, np.zeros((b, m.state_size), np.float32), tf)
        assert fc.shape == (b, m.horizon, len(m.output_features)) and fc.dtype == np.float32
        assert st.shape == (b, m.state_size) and st.dtype == np.float32
        if m.probabilistic:
            assert sc is not None and sc.shape == fc.shape and (sc > 0).all()
        else:
            assert sc is None


def test_step_rows_are_independent(impl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rt = impl(tmp_path, STEP)
    x, tf = _inputs(STEP, 5)
    state = np.random.default_rng(2).standard_normal((5, rt.manifest.state_size)).astype(np.float32) * 0.3
    fc, _, st = rt.step(x, state, tf)
    assert tf is not None
    fc3, _, st3 = rt.step(x[3:4], state[3:4], tf[3:4])
    np.testing.assert_allclose(fc[3:4], fc3, atol=1e-6)
    np.testing.assert_allclose(st[3:4], st3, atol=1e-6)


def test_state_carries_information(impl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rt = impl(tmp_path, STEP)
    x, tf = _inputs(STEP, 1)
    zero = np.zeros((1, rt.manifest.state_size), np.float32)
    fc1, _, s1 = rt.step(x, zero, tf)
    fc2, _, _ = rt.step(x, s1, tf)
    assert not np.allclose(fc1, fc2), "the state must change the forecast"
    again, _, _ = rt.step(x, zero, tf)
    np.testing.assert_array_equal(fc1, again)  # deterministic


def test_nan_input_means_missing(impl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rt = impl(tmp_path, STEP)
    x, tf = _inputs(STEP, 2)
    x[0, 1] = np.nan
    fc, sc, st = rt.step(x, np.zeros((2, rt.manifest.state_size), np.float32), tf)
    assert np.isfinite(fc).all() and np.isfinite(st).all() and sc is not None and np.isfinite(sc).all()


def test_window_graph(impl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rt = impl(tmp_path, WINDOW)
    x, _ = _inputs(WINDOW, 4)
    fc, sc = rt.window(x, None)
    assert fc.shape == (4, WINDOW.horizon, 1) and sc is not None and sc.shape == fc.shape
    with pytest.raises(ValueError, match="no step graph"):
        rt.step(x[:, 0], np.zeros((4, 0), np.float32), None)


def test_bad_shapes_are_clear_errors(impl, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rt = impl(tmp_path, STEP)
    x, tf = _inputs(STEP, 2)
    with pytest.raises(ValueError, match="x has shape"):
        rt.step(x[:, :1], np.zeros((2, rt.manifest.state_size), np.float32), tf)
    with pytest.raises(ValueError, match="state has shape"):
        rt.step(x, np.zeros((2, 3), np.float32), tf)
    with pytest.raises(ValueError, match="time features"):
        rt.step(x, np.zeros((2, rt.manifest.state_size), np.float32), None)


@pytest.mark.parametrize("spec", [STEP, WINDOW, RNN], ids=["step", "window", "rnn"])
def test_ort_matches_numpy_twin(tmp_path: Path, spec: KitSpec) -> None:
    ort_rt, twin = _ort(tmp_path / "a", spec), _twin(tmp_path / "b", spec)
    x, tf = _inputs(spec, 6)
    if spec.kind == "step":
        state = np.zeros((6, ort_rt.manifest.state_size), np.float32)
        s_o, s_t = state, state
        for _ in range(20):  # roll the state: errors would accumulate
            fo, _, s_o = ort_rt.step(x, s_o, tf)
            ft, _, s_t = twin.step(x, s_t, tf)
        np.testing.assert_allclose(fo, ft, atol=1e-5)
    else:
        fo, _so = ort_rt.window(x, tf)
        ft, _st = twin.window(x, tf)
        np.testing.assert_allclose(fo, ft, atol=1e-5)


def test_window_equals_rolled_step(tmp_path: Path) -> None:
    """The kit's window graph is its step graph unrolled: the basis of the recompute benchmark."""
    base = KitSpec(name="u", hidden=6, window=7, horizon=2, seed=3)
    step_rt = _ort(tmp_path, base)
    win_rt = _ort(tmp_path, KitSpec(name="v", kind="window", hidden=6, window=7, horizon=2, seed=3))
    x, _ = _inputs(KitSpec(kind="window", window=7), 3)
    state = np.zeros((3, step_rt.manifest.state_size), np.float32)
    fc = np.zeros(0, np.float32)
    for t in range(7):
        fc, _, state = step_rt.step(x[:, t], state, None)
    fw, _ = win_rt.window(x, None)
    np.testing.assert_allclose(fc, fw, atol=1e-5)
