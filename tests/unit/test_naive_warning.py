"""`sensorcast train` warns when the model's forecasts are no better than a naive baseline."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from service.cli import main
from training.evaluate import naive_warning
from training.metrics import Score
from training.trainer import Assessment


def _score(mse: float) -> Score:
    return Score(mse=mse, mae=mse, mse_by_step=(mse,), mae_by_step=(mse,), count=10)


def _assessment(model: float, last: float, seasonal: float | None = None) -> Assessment:
    return Assessment(_score(model), _score(last), None if seasonal is None else _score(seasonal), None)


def test_a_model_clearly_better_than_the_baselines_gets_no_warning() -> None:
    assert naive_warning({"val": _assessment(0.5, 1.0, 0.9), "test": _assessment(0.6, 1.0, 0.8)}) is None


def test_a_model_that_only_matches_repeat_last_is_named() -> None:
    warning = naive_warning({"val": _assessment(0.2, 1.0), "test": _assessment(0.98, 1.0)})
    assert warning is not None and "repeat-last on test" in warning and "0.98" in warning


def test_the_best_baseline_is_the_one_compared_and_val_is_used_without_test() -> None:
    warning = naive_warning({"val": _assessment(0.7, 1.0, 0.72)})
    assert warning is not None and "seasonal-naive on val" in warning


@pytest.mark.artefact
def test_training_on_a_random_walk_warns_but_exports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A random walk: the last value is the best forecast there is, so no model can beat it.
    rng = np.random.default_rng(5)
    walk = 50 + np.cumsum(rng.normal(0, 1, 600))
    with (tmp_path / "walk.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time", "level"])
        w.writerows([1_700_000_000 + 60 * i, f"{v:.4f}"] for i, v in enumerate(walk))
    rc = main(["train", "--source", str(tmp_path / "walk.csv"), "--name", "walk", "--version", "v1",
               "--hidden", "8", "--horizon", "4", "--epochs", "2", "--no-progress",
               "--models-dir", str(tmp_path / "models"), "--runs-dir", str(tmp_path / "runs")])
    assert rc == 0
    assert (tmp_path / "models" / "walk" / "v1" / "manifest.json").exists()
    assert "no better than repeat-last" in capsys.readouterr().err
