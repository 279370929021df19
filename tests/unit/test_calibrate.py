"""Anomaly calibration (training/calibrate.py) on synthetic data with known residuals.

Kit models (tools/modelkit.py, no torch) with zero offsets forecast the last value with a
constant spread of about 1: on a random walk their one-step residuals are exactly the walk's
white-noise increments, so the nominal tails are right and the factors should be near 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

pytest.importorskip("onnx")

from service.backtest import backtest_frame
from service.runtime.manifest import load_manifest, sha256_file
from tools.modelkit import KitSpec, build_onnx, write_model
from training.calibrate import (
    Segment,
    calibrate,
    episode_peaks,
    open_model,
    shrunk_precision,
    tail_threshold,
    write_block,
)
from training.calibrate_command import add_arguments, run

CADENCE = 60.0
T0 = 1_700_000_040 * 10**9


def last_value_model(models: Path, features: tuple[str, ...] = ("value",), name: str = "walk") -> Path:
    """A kit model forecasting x[t+1] = x[t] with a spread of about 1 (softplus(0.49) + 0.05)."""
    spec = KitSpec(name=name, features=features, weight_scale=0.0, cadence_s=CADENCE, horizon=4)
    folder, w = write_model(models, spec)
    w.v[:] = 0.0
    w.vb[:] = 0.0
    w.vs[:] = 0.0
    w.vsb[:] = 0.49
    (folder / "model.onnx").write_bytes(build_onnx(w).SerializeToString())
    m = orjson.loads((folder / "manifest.json").read_bytes())
    m["sha256"] = sha256_file(folder / "model.onnx")
    (folder / "manifest.json").write_bytes(orjson.dumps(m, option=orjson.OPT_INDENT_2))
    return folder


def walks(rng: np.random.Generator, n: int, steps: int, cov: np.ndarray | None = None) -> list[np.ndarray]:
    f = 1 if cov is None else len(cov)
    out = []
    for _ in range(n):
        inc = rng.standard_normal((steps, f)) if cov is None else rng.multivariate_normal(np.zeros(f), cov, steps)
        out.append(np.cumsum(inc, axis=0).astype(np.float32))
    return out


def ts(steps: int) -> np.ndarray:
    return T0 + np.arange(steps, dtype=np.int64) * int(CADENCE * 1e9)


def segments(values: list[np.ndarray], start: int) -> list[Segment]:
    return [Segment(str(i), ts(len(v)), v, start, len(v)) for i, v in enumerate(values)]


def test_white_residuals_get_unit_factors_and_the_target_false_alarm_rate(tmp_path: Path) -> None:
    folder = last_value_model(tmp_path)
    rng = np.random.default_rng(3)
    per_day = 1.0  # 1 per 1,440 steps: observable on a few dozen stream-days
    r = calibrate(open_model(folder), segments(walks(rng, 20, 2200), 200), per_day)
    assert r.block.precision is None and r.block.steps >= 39_000
    assert all(0.8 <= f <= 1.25 for f in r.factors), r.factors
    assert r.block.extreme_threshold >= r.block.threshold
    write_block(folder, r.block)
    # Fresh walks through the live engine (backtest): count the anomaly alerts.
    fresh = np.concatenate(walks(rng, 20, 3000), axis=1)
    rows = backtest_frame(tmp_path, "walk", ts(3000).tolist(), fresh.tolist(), [f"s{i}" for i in range(20)])
    fired = sum(1 for b in rows for e, c in zip(b.event.split(";"), b.check.split(";"), strict=False)
                if e == "firing" and c == "anomaly")
    days = sum(1 for b in rows if b.score is not None) * CADENCE / 86400
    expected = per_day * days
    print(f"fresh noise: {fired} false alerts in {days:.1f} stream-days, target {expected:.1f}, "
          f"fitted {r.expected_per_day * days:.1f}")
    assert expected / 4 <= fired <= expected * 2.5


def test_correlated_residuals_get_a_precision(tmp_path: Path) -> None:
    folder = last_value_model(tmp_path, ("a", "b", "c"), name="trio")
    cov = np.array([[1.0, 0.8, 0.0], [0.8, 1.0, 0.0], [0.0, 0.0, 1.0]])
    r = calibrate(open_model(folder), segments(walks(np.random.default_rng(4), 6, 1500, cov), 300), 1.0)
    assert r.block.precision is not None
    p = np.array(r.block.precision)
    # The inverse of [[1, .8], [.8, 1]] is [[2.78, -2.22], [-2.22, 2.78]]; shrinkage pulls it in a little.
    assert p[0, 1] < -1.5 and p[0, 0] > 2.0 and abs(p[0, 2]) < 0.3 and abs(p[2, 2] - 1.0) < 0.3
    assert np.allclose(p, p.T)


def test_shrinkage() -> None:
    rng = np.random.default_rng(5)
    assert shrunk_precision(rng.standard_normal((500, 1))) is None
    few = shrunk_precision(rng.standard_normal((12, 8)))  # few rows: pulled hard toward the identity
    assert few is not None and np.abs(few - np.eye(8)).max() < 0.6
    many = shrunk_precision(rng.standard_normal((20_000, 4)))
    assert many is not None and np.abs(many - np.eye(4)).max() < 0.05


def test_tail_threshold_extrapolates_an_exponential_tail() -> None:
    # -log10 of uniform p: P(L > l) = 10^-l, independent steps; a 1e-6 rate is at l = 6.
    rng = np.random.default_rng(6)
    seqs = [-np.log10(rng.random(20_000)) for _ in range(5)]
    t, rate = tail_threshold(seqs, 1e-6, gap=1)
    assert 5.5 < t < 6.5 and 0.5e-6 < rate < 2e-6
    assert episode_peaks([np.array([0.0, 3.0, 0.0, 4.0, 0.0, 0.0, 0.0, 5.0])], 1.0, gap=3) == [4.0, 5.0]


def test_calibrate_command_rewrites_only_the_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    folder = last_value_model(tmp_path / "models")
    onnx_before = (folder / "model.onnx").read_bytes()
    before = load_manifest(folder)
    values = np.concatenate(walks(np.random.default_rng(7), 1, 1500))
    csv = tmp_path / "history.csv"
    csv.write_text("timestamp,value\n" + "".join(f"{t // 10**9},{v:.6f}\n" for t, v in zip(ts(1500), values[:, 0],
                                                                                           strict=True)))
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert run(p.parse_args([str(folder), "--source", str(csv), "--split-rows", "300,1500"])) == 0
    assert "anomaly calibration: " in capsys.readouterr().out
    assert (folder / "model.onnx").read_bytes() == onnx_before
    after = load_manifest(folder)  # validates, hash included
    assert after.anomaly is not None and after.anomaly.steps > 1000 and before.anomaly is None
    assert after.model_copy(update={"anomaly": None}) == before
    # no temporary left (the kit model ships its sequence form beside the step graph)
    assert sorted(q.name for q in folder.iterdir()) == ["manifest.json", "model.onnx", "model.seq.onnx"]
    # A bad split is one line and exit 2, the manifest untouched.
    text = (folder / "manifest.json").read_bytes()
    assert run(p.parse_args([str(folder), "--source", str(csv), "--split-rows", "x"])) == 2
    assert "--split-rows" in capsys.readouterr().err
    assert (folder / "manifest.json").read_bytes() == text


def test_window_models_calibrate_too(tmp_path: Path) -> None:
    spec = KitSpec(name="win", kind="window", window=8, cadence_s=CADENCE, horizon=4, warmup_steps=8)
    folder, _ = write_model(tmp_path, spec)
    r = calibrate(open_model(folder), segments(walks(np.random.default_rng(9), 3, 700), 300), 1.0)
    assert r.block.steps > 1000 and r.block.precision is None
    assert 0 < r.block.threshold <= r.block.extreme_threshold < 1
