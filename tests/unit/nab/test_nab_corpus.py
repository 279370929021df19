"""Two real NAB files end to end: sensorcast through ``sensorcast backtest``, NAB result files, scoring."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from evaluation.nab.corpus import load_corpus, load_profiles, probation_length
from evaluation.nab.engine_run import run_engine
from evaluation.nab.persistence import write_model
from evaluation.nab.run import label_column, score_run, write_results

FILES = ["artificialWithAnomaly/art_daily_jumpsup.csv", "realAWSCloudwatch/ec2_cpu_utilization_ac20cd.csv"]


@pytest.mark.bench_data
def test_sensorcast_detects_both_windows_without_false_positives(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "nab"
    files = load_corpus(root, FILES)
    profiles = load_profiles(root)
    scores = run_engine(files, write_model(tmp_path / "models"))
    for f in files:
        s, lab = scores[f.name], label_column(f)
        p = probation_length(len(s))
        # The anomaly window holds the file's highest post-probation score.
        assert s[p:][lab[p:] == 1].max() > s[p:][lab[p:] == 0].max(), f.name

    run = score_run("sensorcast", scores, 0.0, files, profiles)
    std = run.results["standard"]
    assert std.detected_windows == 2 and std.fp_rows == 0
    assert std.score > 50  # both found, neither at its window's very end

    base = write_results(run, files, tmp_path / "results", profiles)
    path = base / "artificialWithAnomaly" / "sensorcast_art_daily_jumpsup.csv"
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["timestamp", "value", "anomaly_score", "label", "S(t)_standard",
                             "S(t)_reward_low_FP_rate", "S(t)_reward_low_FN_rate"]
    # A detection at the window's first row earns exactly tp; before any window, -fp.
    first = next(i for i, r in enumerate(rows) if r["label"] == "1")
    assert float(rows[first]["S(t)_standard"]) == pytest.approx(1.0)
    assert float(rows[0]["S(t)_reward_low_FP_rate"]) == pytest.approx(-0.22)
    assert len(rows) == len(files[0].values)
    assert rows[0]["timestamp"] == "2014-04-01 00:00:00"
    np.testing.assert_allclose([float(r["anomaly_score"]) for r in rows], scores[files[0].name])
    assert sum(int(r["label"]) for r in rows) == int(label_column(files[0]).sum())
