"""Training data handling: resampling, masking, chronological splits, train-only scaling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.records import NS_PER_S, Reading, StreamKey
from training.config import Config, DataConfig, ModelConfig, from_dict, load, validate
from training.data import (
    Split,
    load_csv,
    readings_to_dataset,
    resample,
    split_rows,
    targets,
    train_stats,
)
from training.metrics import repeat_last, score, seasonal_naive

S = NS_PER_S


def test_resample_averages_bins_and_leaves_gaps_missing() -> None:
    # Bins are ((k-1)c, kc] labelled kc, as the service's stream resampler does.
    ts = np.array([0, 2 * S, 10 * S, 31 * S, 40 * S], dtype=np.int64)
    v = np.array([[1.0], [3.0], [5.0], [7.0], [9.0]], dtype=np.float32)
    grid, out = resample(ts, v, 10.0)
    assert grid.tolist() == [0, 10 * S, 20 * S, 30 * S, 40 * S]
    assert out[0, 0] == 1.0 and out[1, 0] == 4.0 and out[4, 0] == 8.0
    assert np.isnan(out[2, 0]) and np.isnan(out[3, 0])  # nothing arrived: missing, not interpolated


def test_resample_bins_match_the_service_resampler() -> None:
    ts = np.array([1 * S, 9 * S, 10 * S, 10 * S + 1, 20 * S], dtype=np.int64)
    v = np.arange(5, dtype=np.float32)[:, None]
    grid, out = resample(ts, v, 10.0)
    assert grid.tolist() == [10 * S, 20 * S]  # 1, 9 and 10 s end at 10 s; 10 s + 1 ns and 20 s at 20 s
    assert out[:, 0].tolist() == [1.0, 3.5]


def test_csv_missing_cells_stay_nan(tmp_path: Path) -> None:
    p = tmp_path / "h.csv"
    p.write_text("time,a,b\n2024-01-01T00:00:00,1,10\n2024-01-01T01:00:00,,11\n2024-01-01T02:00:00,oops,12\n"
                 "2024-01-01T03:00:00,4,13\n")
    ds = load_csv(DataConfig(source=str(p), time_column="time"))
    assert ds.features == ("a", "b") and ds.cadence_s == 3600.0
    v = ds.series[0].values
    assert np.isnan(v[1, 0]) and np.isnan(v[2, 0])  # empty and garbled cells: missing
    assert v[:, 1].tolist() == [10, 11, 12, 13]


def test_csv_univariate_layout_makes_one_series_per_column(tmp_path: Path) -> None:
    p = tmp_path / "h.csv"
    p.write_text("date,a,b\n" + "".join(f"{1_700_000_000 + 60 * i},{i},{2 * i}\n" for i in range(5)))
    ds = load_csv(DataConfig(source=str(p), layout="univariate"))
    assert ds.features == ("value",)
    assert [s.name for s in ds.series] == ["a", "b"]
    assert ds.series[1].values[:, 0].tolist() == [0, 2, 4, 6, 8]


def test_csv_unknown_column_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "h.csv"
    p.write_text("date,a\n1,1\n2,2\n3,3\n")
    with pytest.raises(ValueError, match="'zzz' not in the header"):
        load_csv(DataConfig(source=str(p), streams=("zzz",)))


def test_splits_are_chronological_and_stats_use_train_only() -> None:
    sp = split_rows(100, DataConfig(split=(0.6, 0.2)))
    assert (sp.train_end, sp.val_end, sp.test_end) == (60, 80, 100)
    v = np.arange(100, dtype=np.float32)[:, None]
    mean, std = train_stats([v], [sp])
    v2 = v.copy()
    v2[60:] = 1e6  # whatever happens after the train split must not leak into the stats
    mean2, std2 = train_stats([v2], [sp])
    assert mean[0] == pytest.approx(29.5) and mean2[0] == mean[0] and std2[0] == std[0]
    assert std[0] == pytest.approx(np.arange(60).std(), rel=1e-5)  # population std


def test_explicit_split_rows_are_checked() -> None:
    with pytest.raises(ValueError, match="split_rows"):
        split_rows(100, DataConfig(split_rows=(50, 40, 100)))


def test_stats_ignore_missing_values() -> None:
    v = np.array([[1.0], [np.nan], [3.0], [100.0]], dtype=np.float32)
    mean, _ = train_stats([v], [Split(3, 4, 4)])
    assert mean[0] == 2.0


def test_targets_are_masked_past_the_split_end() -> None:
    v = np.arange(10, dtype=np.float32)[:, None]
    y = targets(v, 3, end=6)
    assert y.shape == (10, 3, 1)
    assert y[0, :, 0].tolist() == [1, 2, 3]
    assert y[3, 1, 0] == 5 and np.isnan(y[3, 2, 0])  # row 6 is past the end
    assert np.isnan(y[9]).all()


def test_readings_to_dataset_layouts() -> None:
    def rs(dev: str, q: str, vals: list[float]) -> list[Reading]:
        k = StreamKey(dev, q)
        return [Reading(k, i * 60 * S, v) for i, v in enumerate(vals)]

    data = {StreamKey("d1", "t"): rs("d1", "t", [1, 2, 3]), StreamKey("d1", "h"): rs("d1", "h", [5, 6, 7]),
            StreamKey("d2", "t"): rs("d2", "t", [9, 9, 9])}
    multi = readings_to_dataset(data, DataConfig(), "mem")
    assert multi.features == ("h", "t") and [s.name for s in multi.series] == ["d1", "d2"]
    assert multi.series[0].values.tolist() == [[5, 1], [6, 2], [7, 3]]
    assert np.isnan(multi.series[1].values[:, 0]).all()  # d2 has no humidity: missing
    uni = readings_to_dataset(data, DataConfig(layout="univariate"), "mem")
    assert [s.name for s in uni.series] == ["d1/h", "d1/t", "d2/t"] and uni.features == ("value",)


def test_baselines() -> None:
    v = np.array([[0.0], [1.0], [2.0], [np.nan], [4.0], [5.0]], dtype=np.float32)
    pos = np.array([3])
    assert repeat_last(v, pos, 2)[0, :, 0].tolist() == [2.0, 2.0]  # last observed, not NaN
    sn = seasonal_naive(v, pos, 3, season=2)
    # target rows 4, 5, 6 read rows 2, 3 (missing -> filled 2), 2
    assert sn[0, :, 0].tolist() == [2.0, 2.0, 2.0]  # row 4 is not seen yet at p=3


def test_score_skips_missing_targets() -> None:
    fc = np.zeros((1, 2, 1), np.float32)
    y = np.array([[[2.0], [np.nan]]], np.float32)
    s = score(fc, y, np.zeros(1, np.float32), np.full(1, 2.0, np.float32))
    assert s.mse == 1.0 and s.mae == 1.0 and s.count == 1


def test_config_files_and_refusals(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('name = "m"\n[data]\nsource = "x.csv"\nstreams = ["a"]\n[model]\ncell = "lstm"\nhorizon = 4\n')
    cfg = load(p)
    assert cfg.model.cell == "lstm" and cfg.data.streams == ("a",)
    y = tmp_path / "c.yaml"
    y.write_text("name: m\nmodel:\n  cell: segrnn\n  window: 48\n  segment: 12\n")
    assert load(y).model.window == 48
    with pytest.raises(ValueError, match="unknown keys"):
        from_dict({"model": {"cel": "gru"}})
    with pytest.raises(ValueError, match="bidirectional"):
        validate(Config(model=ModelConfig(cell="gru", bidirectional=True)))
    with pytest.raises(ValueError, match="multiple"):
        validate(Config(model=ModelConfig(cell="segrnn", window=50, segment=24)))


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_csv_delimiter_is_detected_and_decimal_commas_are_numbers(tmp_path: Path, sep: str) -> None:
    p = tmp_path / "h.csv"
    p.write_text(sep.join(["time", "a", "b"]) + "\n"
                 + "".join(sep.join([str(1_700_000_000 + 60 * i), f"{i},5", f"{2 * i}"]) + "\n" for i in range(4)))
    ds = load_csv(DataConfig(source=str(p), time_column="time"))
    assert ds.features == ("a", "b")
    assert ds.series[0].values[:, 0].tolist() == [0.5, 1.5, 2.5, 3.5]


def test_csv_user_errors_name_what_was_found(tmp_path: Path) -> None:
    from training.data import DataError

    with pytest.raises(DataError, match="found nothing; expected a CSV file"):
        load_csv(DataConfig(source=str(tmp_path / "none.csv")))
    p = tmp_path / "h.csv"
    p.write_text("time,a,a\n1,1,2\n2,2,3\n3,3,4\n")
    with pytest.raises(DataError, match="'a' is ambiguous"):
        load_csv(DataConfig(source=str(p), time_column="time"))
    p.write_text("time,a\nnoon,1\n2,2\n3,3\n")
    with pytest.raises(DataError, match="row 2: time 'noon'"):
        load_csv(DataConfig(source=str(p), time_column="time"))
    p.write_text("time,a\n1,x\n2,y\n3,\n")
    with pytest.raises(DataError, match=r"column 'a' has no number in 3 rows \(found e\.g\. 'x'\)"):
        load_csv(DataConfig(source=str(p), time_column="time"))
