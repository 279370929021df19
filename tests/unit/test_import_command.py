"""`sensorcast import` into SQLite: history of any age stored, bad rows refused by reason, units kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cli import main
from service.config import StoreSettings, StreamRules
from service.import_command import split_unit
from service.records import NS_PER_S, StreamKey
from service.store import open_store
from service.store.streamsettings import StreamSettings
from service.tabular import parse_time

MESSY = (
    "timestamp;temp [°C];pressure (bar);label\n"
    "2013-12-02 21:15:00;20,5;1,01;0\n"
    "2013-12-02 21:20:00;20,7;nan;0\n"
    "2013-12-02 21:20:00;99,0;9,0;0\n"  # same time again
    "2013-12-02 21:10:00;99,0;9,0;0\n"  # earlier than the row before
    "yesterday;1;1;0\n"
    "2013-12-02 21:25:00;;x;1\n"
    "2099-12-02 21:25:00;1;1;1\n"
    "2013-12-02 21:30:00;21,0\n"  # a field short
    "2013-12-02 21:35:00;21,5;1,02;0\n"
)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for k in [k for k in __import__("os").environ if k.startswith("SENSORCAST_")]:
        monkeypatch.delenv(k)
    e = {"SENSORCAST_STORE__URL": f"sqlite:///{tmp_path / 'store.db'}",
         "SENSORCAST_STREAMS__SETTINGS_PATH": str(tmp_path / "stream_settings.sqlite")}
    for k, v in e.items():
        monkeypatch.setenv(k, v)
    return e


def _read(env: dict[str, str], stream: str) -> list[tuple[int, float]]:
    store = open_store(StoreSettings(url=env["SENSORCAST_STORE__URL"]))
    try:
        return [(r.ts_ns, r.value) for r in store.read_range(StreamKey.parse(stream), 0, 2**62)]
    finally:
        store.close()


def _rules(env: dict[str, str], stream: str) -> StreamRules | None:
    s = StreamSettings(Path(env["SENSORCAST_STREAMS__SETTINGS_PATH"]))
    try:
        return s.get(stream)
    finally:
        s.close()


def test_old_history_is_stored_and_bad_rows_are_refused_by_reason(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "machine.csv"
    f.write_text(MESSY, encoding="utf-8")
    assert main(["import", str(f), "--device", "machine2"]) == 0
    out = capsys.readouterr().out
    assert "read 9 rows" in out and "stored 5 readings" in out
    for reason in ("1 rows bad_timestamp", "1 rows duplicate_timestamp", "1 rows out_of_order", "1 rows future",
                   "1 rows wrong_field_count", "1 cells empty", "1 cells non_numeric", "1 cells not_finite"):
        assert reason in out, reason
    assert "['label'] look like labels and are not imported" in out
    assert "machine2/temp [°C]: 3 readings, 2013-12-02T21:15:00Z .. 2013-12-02T21:35:00Z" in out
    assert "next: sensorcast train --from-store --streams machine2/temp,machine2/pressure --name machine2" in out
    t0 = parse_time("2013-12-02T21:15:00Z")
    # 2013 is older than ingest.max_past_s allows live data: history is stored all the same.
    assert _read(env, "machine2/temp") == [(t0, 20.5), (t0 + 300 * NS_PER_S, 20.7), (t0 + 1200 * NS_PER_S, 21.5)]
    assert _read(env, "machine2/pressure") == [(t0, 1.01), (t0 + 1200 * NS_PER_S, 1.02)]
    assert _read(env, "machine2/label") == []
    rules = _rules(env, "machine2/temp")
    assert rules is not None and rules.unit == "°C"
    assert (_rules(env, "machine2/pressure") or StreamRules()).unit == "bar"
    # Importing again overwrites the same points: nothing doubles.
    assert main(["import", str(f), "--device", "machine2"]) == 0
    assert len(_read(env, "machine2/temp")) == 3


def test_units_from_flags_merge_with_the_stream_rules(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = StreamSettings(Path(env["SENSORCAST_STREAMS__SETTINGS_PATH"]))
    s.put("site/a;line=2", StreamRules(threshold=0.9, unit="K"))
    s.put("site/b;line=2", StreamRules(max=5.0, unit="mbar"))
    s.close()
    f = tmp_path / "plant.csv"
    f.write_text("Time,a (degC),b [bar],c\n1700000000,1.5,2,3\n1700000060,1.6,2,3\n1700000120,1.7,2,3\n")
    rc = main(["import", str(f), "--device", "site", "--tag", "line=2", "--columns", "a,b [bar]",
               "--unit", "a=°C", "--time-column", "Time"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "stored 6 readings" in out and "site/c" not in out
    a = _rules(env, "site/a;line=2")
    assert a is not None and (a.unit, a.threshold) == ("°C", 0.9)  # --unit wins; the threshold is kept
    b = _rules(env, "site/b;line=2")
    assert b is not None and (b.unit, b.max) == ("mbar", 5.0)  # a header's unit never overrides a configured one
    assert "unit of site/b;line=2: kept the configured 'mbar'" in out
    assert "--streams 'site/a;line=2,site/b;line=2'" in out  # quoted for the shell
    assert [v for _, v in _read(env, "site/a;line=2")] == [1.5, 1.6, 1.7]


@pytest.mark.parametrize(("args", "expected"), [
    (["--unit", "nope=K"], "--unit names columns ['nope'] that are not imported"),
    (["--columns", "missing"], "column 'missing' not in the header"),
    (["--tag", "site"], "--tag 'site': expected key=value"),
    (["--device", " pump"], "cannot be stored: device ' pump' has leading or trailing whitespace"),
    (["--delimiter", ";;"], "--delimiter ';;': expected one character"),
    (["--time-column", "value"], None),  # the value column as time: every row refused, nothing stored
])
def test_refusals_are_one_line(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str | None
) -> None:
    f = tmp_path / "x.csv"
    f.write_text("timestamp,value\n2024-01-01T00:00:00Z,1\n2024-01-01T00:01:00Z,abc\n")
    rc = main(["import", str(f), *args])
    err = capsys.readouterr().err
    if expected is None:
        assert rc == 1 and "nothing stored" in err
    else:
        assert rc == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_history_older_than_the_retention_is_a_warning(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SENSORCAST_STORE__RETENTION_DAYS", "30")
    f = tmp_path / "old.csv"
    f.write_text("timestamp,value\n2014-01-01T00:00:00Z,1\n2014-01-01T00:01:00Z,2\n")
    assert main(["import", str(f)]) == 0
    assert "older than store.retention_days = 30: the next prune deletes them" in capsys.readouterr().out


def test_a_missing_file_is_one_line(env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", str(tmp_path / "none.csv")]) == 2
    assert "expected a CSV file with a header row (check FILE)" in capsys.readouterr().err


@pytest.mark.parametrize(("header", "expected"), [
    ("temp [°C]", ("temp", "°C")), ("temp (degC)", ("temp", "degC")), ("temp", ("temp", None)),
    ("flow [m3/h]", ("flow", "m3/h")), ("(x)", ("(x)", None)), ("a [b] c", ("a [b] c", None)),
])
def test_units_in_headers(header: str, expected: tuple[str, str | None]) -> None:
    assert split_unit(header) == expected


def test_train_from_store_reads_the_store_import_wrote(env: dict[str, str]) -> None:
    import argparse

    from training.command import add_arguments, config_from_args
    from training.data import DataError as TrainDataError

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args(["--from-store", "--streams", "machine2/temp", "--name", "m"]))
    assert cfg.data.source == env["SENSORCAST_STORE__URL"] and cfg.data.streams == ("machine2/temp",)
    with pytest.raises(TrainDataError, match="--from-store and a source"):
        config_from_args(p.parse_args(["--from-store", "--source", "x.csv"]))


def test_a_one_feature_device_model_declares_device_slash_quantity() -> None:
    """`train --from-store --streams machine2/temperature` (layout series, one feature) makes a
    one-feature model, served per device/quantity: the manifest must name that id, not the device."""
    import numpy as np

    from training.config import DataConfig
    from training.data import Series
    from training.export import served_streams

    none = np.zeros(0, np.int64), np.zeros((0, 1), np.float32)
    store = DataConfig(source="sqlite:///x.db")
    assert served_streams(store, [Series("machine2", *none)], ("temperature",)) == ["machine2/temperature"]
    assert served_streams(store, [Series("press 7", *none)], ("a", "b")) == ["press 7"]  # multivariate: the device
