"""Issue #11 item 8: backtest and train read history alike and the backtest's output is exact.

One CSV reader (``service/tabular.py``) for ``sensorcast train`` and ``sensorcast backtest``:
';' files with decimal commas, one default time column, label-like columns left out unless
named. The backtest writes full-precision numbers and each alert event's check, kind and
contributing features. ``--split-rows`` may leave no test part.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from service.backtest import BacktestRow, _with_events, backtest_frame, load_csv, write_rows
from service.cli import main
from service.records import Alert, StreamKey
from service.tabular import DataError, is_label, parse_time
from tests.modelkit import KitSpec, settings_for, write_model
from training.command import add_arguments as train_arguments
from training.command import config_from_args
from training.config import DataConfig
from training.data import load_csv as train_load_csv
from training.data import split_rows

C = 300 * 10**9
SPEC = KitSpec(name="bt", cadence_s=300, hidden=8, warmup_steps=10, mean=(50.0,), std=(5.0,))
T0 = 1_400_000_000 // 300 * C


def _european(path: Path, n: int = 60) -> tuple[Path, list[float]]:
    """';' between fields, decimal commas, a 'Datetime' column and two label columns."""
    vals = [round(50 + 5 * math.sin(i / 6), 3) for i in range(n)]
    lines = ["Datetime;value;anomaly;changepoint"]
    for i, v in enumerate(vals):
        lines.append(f"{(T0 + i * C) // 10**9};{str(v).replace('.', ',')};{int(i == 40)};0")
    path.write_text("\n".join(lines) + "\n")
    return path, vals


def test_semicolon_decimal_comma_file_reads_the_same_in_train_and_backtest(tmp_path: Path) -> None:
    src, vals = _european(tmp_path / "rig.csv")
    h = load_csv(src)  # backtest: no --time-column, no --delimiter, no --columns
    assert h.columns == ["value"] and [v[0] for v in h.values] == vals
    assert h.ts_ns == [T0 + i * C for i in range(len(vals))]
    assert h.notes == ("columns ['anomaly', 'changepoint'] look like labels and are not used as features "
                       "(name them with --columns to use them)",)
    ds = train_load_csv(DataConfig(source=str(src)))  # train: the same defaults
    assert ds.features == ("value",) and ds.cadence_s == 300
    assert ds.series[0].values[:, 0].tolist() == np.array(vals, dtype=np.float32).tolist()
    assert ds.series[0].ts_ns.tolist() == h.ts_ns
    assert len(ds.notes) == 1 and "--streams" in ds.notes[0]


def test_label_columns_are_used_when_named(tmp_path: Path) -> None:
    src, _ = _european(tmp_path / "rig.csv")
    h = load_csv(src, columns=["value", "anomaly"])
    assert h.columns == ["value", "anomaly"] and h.notes == ()
    assert [v[1] for v in h.values].count(1.0) == 1
    ds = train_load_csv(DataConfig(source=str(src), streams=("value", "anomaly")))
    assert ds.features == ("value", "anomaly") and ds.notes == ()
    assert [is_label(n) for n in ("Anomaly", "is-anomaly", "Label", "labels", "changepoint", "temp", "target")] == [
        True, True, True, True, True, False, False]


def test_time_column_default_is_one_time_like_column(tmp_path: Path) -> None:
    p = tmp_path / "h.csv"
    p.write_text("date,time,a\n2024-01-01,1,1\n2024-01-02,2,2\n2024-01-03,3,3\n")
    with pytest.raises(DataError, match=r"found time columns \['date', 'time'\].*--time-column"):
        load_csv(p)
    with pytest.raises(DataError, match=r"found time columns \['date', 'time'\]"):
        train_load_csv(DataConfig(source=str(p)))
    assert load_csv(p, "date").columns == ["time", "a"]
    p.write_text("when,a\n1,1\n2,2\n3,3\n")
    with pytest.raises(DataError, match="found no time column"):
        load_csv(p)


def test_backtest_command_on_a_semicolon_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_model(tmp_path / "models", SPEC)
    src, vals = _european(tmp_path / "rig.csv")
    out = tmp_path / "out.csv"
    rc = main(["backtest", "--model", "bt", "--models-dir", str(tmp_path / "models"), "--csv", str(src),
               "--out", str(out)])
    assert rc == 0
    err = capsys.readouterr().err
    assert err.count("look like labels") == 1
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert {r["stream"] for r in rows} == {"backtest/value"}
    assert [float(r["value"]) for r in rows] == vals
    assert list(rows[0]) == ["timestamp", "stream", "value", "expected", "lower", "upper", "score", "evidence", "status",
                             "event", "check", "kind", "contributors"]
    # An explicit wrong delimiter is the reader's one-line refusal, exit 2.
    rc = main(["backtest", "--model", "bt", "--models-dir", str(tmp_path / "models"), "--csv", str(src),
               "--delimiter", ","])
    assert rc == 2
    assert "found one column" in capsys.readouterr().err


def test_scores_are_written_in_full_precision(tmp_path: Path) -> None:
    write_model(tmp_path / "models", SPEC)
    n = 200
    rng = np.random.default_rng(1)
    v = 50 + 5 * np.sin(np.arange(n) / 6) + rng.normal(0, 0.2, n)
    v[150] += 40
    ts = [T0 + i * C for i in range(n)]
    settings = settings_for(tmp_path, tmp_path / "models", anomaly={"min_count": 1, "window": 1})
    rows = backtest_frame(tmp_path / "models", "bt", ts, [[x] for x in v], ["value"], settings)
    out = tmp_path / "out.csv"
    write_rows(rows, out)
    back = list(csv.DictReader(out.read_text().splitlines()))
    for r, b in zip(rows, back, strict=True):
        for name in ("value", "expected", "lower", "upper", "score"):
            want = getattr(r, name)
            assert (b[name] == "") if want is None else float(b[name]) == want, (name, b[name], want)
    assert back[150]["event"] == "firing" and back[150]["check"] == "anomaly"
    # Scores near 1 stay distinguishable from 1 (6 digits made them all read "1").
    near = [BacktestRow(0, "s", 1.0, 1.0, 0.0, 2.0, 1 - 1e-9, "firing", "")]
    write_rows(near, out)
    assert float(next(csv.DictReader(out.read_text().splitlines()))["score"]) == 1 - 1e-9


def _alert(state: str, check: str, kind: str, contributors: tuple[tuple[str, float], ...] = ()) -> Alert:
    return Alert(StreamKey("backtest", "*"), "a", state, 0, 1.0, 0.0, -1.0, 1.0, 0.99999, "m", "1", True,  # type: ignore[arg-type]
                 multivariate=True, check=check, kind=kind, contributors=contributors)


def test_alert_events_carry_check_kind_and_contributors(tmp_path: Path) -> None:
    row = BacktestRow(0, "backtest", 1.0, 0.0, -1.0, 1.0, 0.5, "firing", "")
    shares = (("a", 0.7123456789), ("b", 0.2876543211))
    both = _with_events(row, [_alert("resolved", "stuck", "stuck"), _alert("firing", "anomaly", "multivariate",
                                                                            shares)])
    assert (both.event, both.check, both.kind) == ("resolved;firing", "stuck;anomaly", "stuck;multivariate")
    assert both.contributors == shares
    assert _with_events(row, []) is row
    out = tmp_path / "out.csv"
    write_rows([both], out)
    back = next(csv.DictReader(out.read_text().splitlines()))
    assert back["check"] == "stuck;anomaly" and back["kind"] == "stuck;multivariate"
    assert [tuple(c) for c in json.loads(back["contributors"])] == list(shares)


def test_split_rows_may_leave_no_test_part() -> None:
    def cfg(flag: str) -> DataConfig:
        p = argparse.ArgumentParser()
        train_arguments(p)
        return config_from_args(p.parse_args(["--source", "x.csv", "--split-rows", flag])).data

    for flag in ("400,500,500", "400,500"):
        sp = split_rows(600, cfg(flag))
        assert (sp.train_end, sp.val_end, sp.test_end, sp.has_test) == (400, 500, 500, False)
    sp = split_rows(600, cfg("400,500,600"))
    assert sp.has_test and sp.test_end == 600
    for bad in ("400", "400,abc", "500,400", "400,500,450", "0,500", "1,2,3,4"):
        with pytest.raises(DataError, match=f"^--split-rows '{bad}': expected train_end,val_end"):
            cfg(bad)
    with pytest.raises(DataError, match=r"^--split-rows / data.split_rows 400,700: found a series of 600 rows"):
        split_rows(600, cfg("400,700"))


def test_split_rows_error_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--source", "x.csv", "--split-rows", "400,500,450"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sensorcast train: --split-rows '400,500,450'")


@pytest.mark.parametrize("module", ["service.backtest", "training.command"])
def test_every_flag_has_help(module: str) -> None:
    import importlib

    p = argparse.ArgumentParser()
    importlib.import_module(module).add_arguments(p)
    bare = [a.option_strings for a in p._actions if a.option_strings and not a.help]
    assert bare == []
    assert "--delimiter" in p.format_help() and "--time-column" in p.format_help()


def test_epoch_units_by_magnitude() -> None:
    s = 1_700_000_000
    assert parse_time(str(s)) == parse_time(str(s * 1000)) == parse_time(str(s * 10**6)) == s * 10**9
    assert parse_time(str(s * 10**9 + 7)) == s * 10**9 + 7  # nanoseconds stay exact
    assert parse_time("2023-11-14T22:13:20Z") == s * 10**9
    with pytest.raises(ValueError):
        parse_time("nan")
