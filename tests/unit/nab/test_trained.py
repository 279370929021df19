"""The NAB headline's forecaster: a GRU trained by ``sensorcast train`` on the probationary
rows only, cached, and replayed through the live engine (tiny synthetic files, no ../shared)."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np

from evaluation.nab import trained
from evaluation.nab.corpus import DataFile, probation_length
from evaluation.nab.engine_run import evidence_rank, evidence_settings, run_engine
from service.runtime.manifest import load_manifest

T0 = np.datetime64("2020-01-01T00:00:00", "s")
TINY = trained.TrainConfig(hidden=8, horizon=2, epochs=2, chunk=16, minutes=0.5)


def as_file(name: str, n: int, seed: int, shift_at: int | None = None) -> DataFile:
    rng = np.random.default_rng(seed)
    v = 40 + 5 * np.sin(np.arange(n) / 15) + rng.normal(0, 0.5, n)
    if shift_at is not None:
        v[shift_at:] += 40
    return DataFile(name, T0 + np.arange(n) * np.timedelta64(300, "s"), v, ())


def test_training_rows_are_the_probationary_rows_only(tmp_path: Path) -> None:
    files = [as_file("c/a.csv", 1000, 0), as_file("c/b.csv", 6000, 1)]
    rows = trained.training_rows(files)
    assert [len(v) for _, v in rows] == [150, 750]  # min(floor(0.15 N), 750)
    for (_, v), f in zip(rows, files, strict=True):
        np.testing.assert_array_equal(v, f.values[: probation_length(len(f.values))])
    path = tmp_path / "train.csv"
    trained.write_csv(rows, path)
    with path.open(newline="") as fh:
        body = list(csv.reader(fh))
    assert body[0] == ["time", "series", "value"] and len(body) == 1 + 150 + 750
    assert body[1][1] == "nab0" and body[151][1] == "nab1" and body[1][0] == body[151][0]  # same synthetic start
    assert float(body[2][2]) == files[0].values[1]  # repr: full precision


def test_cache_key_follows_data_and_settings() -> None:
    rows = trained.training_rows([as_file("c/a.csv", 1000, 0)])
    key = trained.cache_key(rows, TINY)
    assert key == trained.cache_key(rows, TINY)
    assert key != trained.cache_key(rows, replace(TINY, hidden=16))
    other = [(rows[0][0], rows[0][1] + 1.0)]
    assert key != trained.cache_key(other, TINY)


def test_evidence_rank_keeps_the_order_below_one() -> None:
    s = np.array([0.0, 0.9, 0.999, 1 - 1e-12, 1.0, np.nan])
    r = evidence_rank(s)
    assert r[-1] == 0.0 and np.all(np.diff(r[:-1]) > 0) and r.max() < 1.0
    assert evidence_settings(gate=False).anomaly.threshold is not None
    assert evidence_settings().anomaly.scorer == "evidence" and evidence_settings().anomaly.threshold is None


def test_train_cache_and_replay_through_the_engine(tmp_path: Path) -> None:
    files = [as_file("c/a.csv", 1400, 2, shift_at=1200), as_file("c/b.csv", 1400, 3)]
    first = trained.train_model(files, tmp_path, TINY)
    assert not first.cached and "nab-gru" in first.log
    again = trained.train_model(files, tmp_path, TINY)
    assert again.cached and again.folder == first.folder
    m = load_manifest(first.folder)
    assert m.features == ["value"] and not m.time_features and m.horizon == 2
    assert m.data is not None and m.data.rows == 2 * probation_length(1400)  # no scored row was seen
    scores = run_engine(files, first.folder)  # the surprise scorer, as in the headline
    a, b = scores["c/a.csv"], scores["c/b.csv"]
    assert a.shape == (1400,) and ((a >= 0) & (a <= 1)).all() and ((b >= 0) & (b <= 1)).all()
    assert a[1200:1205].max() > max(a[:1200].max(), b.max())  # the shift outranks everything normal
