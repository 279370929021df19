"""`sensorcast train` calibrates the anomaly evidence of the model it exports (training/calibrate.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from service.cli import main
from service.runtime.manifest import load_manifest

pytestmark = pytest.mark.artefact


def _write_csv(path: Path, n: int = 800) -> None:
    rng = np.random.default_rng(8)
    common = rng.normal(0, 0.3, n)  # a shared disturbance: the two residuals correlate
    lines = ["time,a,b"]
    for i in range(n):
        a = 10 + 2 * np.sin(2 * np.pi * i / 48) + common[i] + rng.normal(0, 0.1)
        b = 5 + np.cos(2 * np.pi * i / 48) + common[i] + rng.normal(0, 0.1)
        lines.append(f"{1_700_000_000 + 600 * i},{a:.4f},{b:.4f}")
    path.write_text("\n".join(lines) + "\n")


def test_train_writes_the_anomaly_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_csv(tmp_path / "hist.csv")
    models = tmp_path / "models"
    args = ["train", "--source", str(tmp_path / "hist.csv"), "--name", "cal", "--version", "1", "--cell", "gru",
            "--hidden", "8", "--horizon", "3", "--epochs", "2", "--chunk", "12", "--batch", "8", "--time-features", "",
            "--split-rows", "500,800", "--false-alerts-per-day", "2", "--no-progress",
            "--models-dir", str(models), "--runs-dir", str(tmp_path / "runs")]
    assert main(args) == 0
    assert "anomaly calibration: " in capsys.readouterr().out
    m = load_manifest(models / "cal" / "1")
    cal = m.anomaly
    assert cal is not None and cal.false_alerts_per_day == 2.0
    assert 250 <= cal.steps <= 300  # the validation rows, scored once the model is warm
    assert cal.precision is not None and len(cal.precision) == 2 and cal.precision[0][1] < 0  # correlated residuals
    assert 0 < cal.threshold <= cal.extreme_threshold < 1
    # A rate of 0 is refused before any training, in one line.
    assert main([*args, "--false-alerts-per-day", "0"]) == 2  # the last flag wins
    assert "false_alerts_per_day" in capsys.readouterr().err
