"""Issue #14 item 8: `sensorcast train` answers a user's mistake with one line and exit 2.

The real command runs in a subprocess on small generated CSVs: missing file, missing or
ambiguous column, a ';' file read with the wrong delimiter, too few rows, a constant
channel. Each fails before any training, so the tests stay fast. A ';' file with decimal
commas and no --delimiter is detected and trains. A refused export keeps the checkpoint.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from service.cli import main
from service.runtime.manifest import load_manifest

pytestmark = pytest.mark.artefact


def _csv(path: Path, header: list[str], rows: int, sep: str = ",", flat: bool = False) -> Path:
    lines = [sep.join(header)]
    for i in range(rows):
        temp = f"{20 + 3 * math.sin(i / 8):.3f}"
        hum = f"{50 + 5 * math.cos(i / 8):.3f}"
        if sep == ";":  # the European export: ';' between fields, decimal commas inside
            temp, hum = temp.replace(".", ","), hum.replace(".", ",")
        vals = [str(1_700_000_000 + 1800 * i), temp, "26.0" if flat else hum][: len(header)]
        lines.append(sep.join(vals))
    path.write_text("\n".join(lines) + "\n")
    return path


def _train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "train", *args, "--models-dir", str(tmp_path / "models"),
         "--runs-dir", str(tmp_path / "runs"), "--no-progress", "--version", "v1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )


def _one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("sensorcast train: ")
    return lines[0]


@pytest.mark.parametrize(
    ("case", "args", "expected"),
    [
        ("missing file", ["--source", "nonexistent.csv"], ["nonexistent.csv", "found nothing", "expected a CSV file"]),
        ("missing time column", ["--source", "{ok}", "--time-column", "date"],
         ["time column 'date' not in the header", "found columns ['time', 'temp', 'hum']", "--time-column"]),
        ("no time-like column", ["--source", "{notime}"],
         ["found no time column in ['t', 'temp', 'hum']", "timestamp, time, datetime, date", "--time-column"]),
        ("bad split", ["--source", "{ok}", "--split-rows", "400"], ["--split-rows '400'", "train_end,val_end"]),
        ("split beyond the rows", ["--source", "{ok}", "--split-rows", "200,400"],
         ["--split-rows / data.split_rows 200,400", "found a series of 300 rows"]),
        ("missing column", ["--source", "{ok}", "--time-column", "time", "--streams", "temp,pressure"],
         ["column 'pressure' not in the header", "['time', 'temp', 'hum']"]),
        ("ambiguous column", ["--source", "{dup}", "--time-column", "time"],
         ["column 'temp' is ambiguous", "2 times"]),
        ("wrong delimiter", ["--source", "{semi}", "--time-column", "time", "--delimiter", ","],
         ["found one column 'time;temp;hum'", "delimiter ','", "--delimiter"]),
        ("too few rows", ["--source", "{short}", "--time-column", "time"],
         ["found 30 rows (train/validation/test 21/2/7)", "too few for chunk 48 and horizon 12", "train needs >= 108"]),
        ("constant channel", ["--source", "{flat}", "--time-column", "time"],
         ["channel 'hum' is constant (26 in all 210 train readings)", "expected a varying signal"]),
        ("unknown cell", ["--source", "{ok}", "--time-column", "time", "--cell", "transformer"],
         ["model.cell 'transformer' unknown", "expected one of"]),
        ("missing config", ["--config", "nope.toml"], ["config nope.toml: no such file"]),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path: Path, case: str, args: list[str],
                                             expected: list[str]) -> None:
    files = {
        "ok": _csv(tmp_path / "ok.csv", ["time", "temp", "hum"], 300),
        "dup": _csv(tmp_path / "dup.csv", ["time", "temp", "temp"], 300),
        "semi": _csv(tmp_path / "semi.csv", ["time", "temp", "hum"], 300, sep=";"),
        "short": _csv(tmp_path / "short.csv", ["time", "temp"], 30),
        "flat": _csv(tmp_path / "flat.csv", ["time", "temp", "hum"], 300, flat=True),
        "notime": _csv(tmp_path / "notime.csv", ["t", "temp", "hum"], 300),
    }
    line = _one_line_error(_train(tmp_path, *[a.format(**{k: str(v) for k, v in files.items()}) for a in args]))
    for text in expected:
        assert text in line, f"{case}: {text!r} not in {line!r}"
    assert not (tmp_path / "models").exists()  # nothing half-written


def test_semicolon_file_with_decimal_commas_is_detected_and_trains(tmp_path: Path) -> None:
    src = _csv(tmp_path / "semi.csv", ["time", "temp", "hum"], 300, sep=";")
    r = _train(tmp_path, "--source", str(src), "--time-column", "time", "--epochs", "1", "--chunk", "12",
               "--horizon", "4", "--hidden", "8", "--time-features", "", "--name", "semi")
    assert r.returncode == 0, r.stderr
    m = load_manifest(tmp_path / "models" / "semi" / "v1")
    assert m.features == ["temp", "hum"]
    # Decimal commas read as numbers (misread, every value would be missing and refused).
    assert m.data.rows == 300 and 0 < m.metrics["test"]["repeat_last_mse"] < 1e3


def test_split_without_a_test_part_trains_and_reports_validation_only(tmp_path: Path) -> None:
    # Issue #11 item 8: train on the first rows, keep the rest for the backtest. A label
    # column is left out of the features by default (printed once).
    src = tmp_path / "rig.csv"
    lines = _csv(tmp_path / "base.csv", ["datetime", "temp", "hum"], 300).read_text().splitlines()
    src.write_text("\n".join([lines[0] + ",anomaly"] + [f"{ln},{int(i > 250)}" for i, ln in enumerate(lines[1:])]))
    r = _train(tmp_path, "--source", str(src), "--split-rows", "200,260", "--epochs", "1", "--chunk", "12",
               "--horizon", "4", "--hidden", "8", "--time-features", "", "--name", "rig")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("['anomaly'] look like labels") == 1
    assert "no test part" in r.stdout
    m = load_manifest(tmp_path / "models" / "rig" / "v1")
    assert m.features == ["temp", "hum"]
    assert "val" in m.metrics and "test" not in m.metrics


def test_refused_export_keeps_the_checkpoint_and_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from training import export as export_mod

    # A graph that disagrees with torch far beyond float32: the export refuses it.
    monkeypatch.setattr(export_mod, "parity", lambda *a, **k: export_mod.Parity(0.5, 5000.0, 0))
    src = _csv(tmp_path / "ok.csv", ["time", "temp", "hum"], 300)
    rc = main(["train", "--source", str(src), "--time-column", "time", "--epochs", "1", "--chunk", "12",
               "--horizon", "4", "--hidden", "8", "--time-features", "", "--name", "plant", "--version", "v1",
               "--models-dir", str(tmp_path / "models"), "--runs-dir", str(tmp_path / "runs"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "export failed" in err[0] and "'temp'" in err[0]
    ckpt = tmp_path / "runs" / "plant" / "v1" / "checkpoint.pt"
    assert str(ckpt) in err[0] and ckpt.stat().st_size > 0
    assert not (tmp_path / "models" / "plant").exists()
