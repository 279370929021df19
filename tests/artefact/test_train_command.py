"""End to end: `sensorcast train` on a generated CSV, then `sensorcast evaluate` on its checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from service.cli import main
from service.runtime.manifest import load_manifest

pytestmark = pytest.mark.artefact


def _write_csv(path: Path, n: int = 700) -> None:
    rng = np.random.default_rng(3)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time", "temp", "hum"])
        for i in range(n):
            temp = 20 + 3 * np.sin(2 * np.pi * i / 48) + rng.normal(0, 0.2)
            hum = 50 + 5 * np.cos(2 * np.pi * i / 48) + rng.normal(0, 0.5)
            # every 37th temperature is lost in transit: an empty cell, kept as missing
            w.writerow([1_700_000_000 + 1800 * i, "" if i % 37 == 5 else f"{temp:.3f}", f"{hum:.3f}"])


def test_train_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_csv(tmp_path / "hist.csv")
    (tmp_path / "train.toml").write_text(
        'name = "tiny"\n'
        "[data]\n"
        f'source = "{tmp_path / "hist.csv"}"\n'
        'time_column = "time"\n'
        'time_features = ["hour_sin", "hour_cos"]\n'
        "[model]\n"
        'cell = "gru"\nhidden = 12\nhorizon = 6\nlags = 12\n'
        "[train]\n"
        "epochs = 2\nchunk = 12\nstrand = 48\nbatch = 8\nprogress = false\n"
    )
    models, runs = tmp_path / "models", tmp_path / "runs"
    rc = main(["train", "--config", str(tmp_path / "train.toml"), "--cell", "lstm", "--version", "v1",
               "--models-dir", str(models), "--runs-dir", str(runs)])
    assert rc == 0
    m = load_manifest(models / "tiny" / "v1")
    assert m.cell == "lstm" and m.kind == "step" and m.horizon == 6  # the flag overrode the file
    assert m.features == ["temp", "hum"] and m.cadence_s == 1800.0
    assert {"val", "test", "parity", "training"} <= set(m.metrics)
    assert m.metrics["test"]["repeat_last_mse"] > 0 and 0 < m.default_threshold < 1
    run = runs / "tiny" / "v1"
    for f in ("checkpoint.pt", "report.json", "report.md", "forecast.png", "training.png"):
        assert (run / f).stat().st_size > 0, f
    rep = json.loads((run / "report.json").read_text())
    assert len(rep["splits"]["test"]["model"]["mse_by_step"]) == 6
    assert rep["splits"]["test"]["model"]["mse"] == pytest.approx(m.metrics["test"]["mse"])
    assert "repeat-last" in capsys.readouterr().out

    out = tmp_path / "eval"
    assert main(["evaluate", str(run / "checkpoint.pt"), "--out", str(out)]) == 0
    again = json.loads((out / "report.json").read_text())
    # the checkpoint rebuilds the same network: the same test score
    assert again["splits"]["test"]["model"]["mse"] == pytest.approx(rep["splits"]["test"]["model"]["mse"], rel=1e-5)
    assert (out / "forecast.png").exists()


def test_train_without_source_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SENSORCAST_STORE__URL", raising=False)  # else that store is the source
    assert main(["train", "--models-dir", str(tmp_path)]) == 2
    assert "found no data source" in capsys.readouterr().err


def test_train_reads_the_services_store_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No --source: the service's store (SENSORCAST_STORE__URL), as the compose trainer has it."""
    import argparse

    from training.command import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    monkeypatch.setenv("SENSORCAST_STORE__URL", f"sqlite:///{tmp_path / 'h.db'}")
    cfg = config_from_args(parser.parse_args(["--name", "plant"]))
    assert cfg.data.source == f"sqlite:///{tmp_path / 'h.db'}"
    # An explicit source still wins.
    cfg = config_from_args(parser.parse_args(["--name", "plant", "--source", "other.csv"]))
    assert cfg.data.source == "other.csv"
