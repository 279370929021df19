"""Backtest: the live path replayed on a simulated clock, as a function and as a command."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from service.backtest import backtest_frame, parse_time
from service.cli import main
from service.metrics import Metrics
from service.records import Reading, StreamKey
from service.runtime.registry import ModelRegistry
from service.streams.engine import Engine
from tests.modelkit import KitSpec, settings_for, write_model

C = 300 * 10**9
SPEC = KitSpec(name="bt", cadence_s=300, hidden=8, warmup_steps=10, mean=(50.0,), std=(5.0,))


def _data(n: int = 200) -> tuple[list[int], np.ndarray]:
    rng = np.random.default_rng(1)
    v = 50 + 5 * np.sin(np.arange(n) / 6) + rng.normal(0, 0.2, n)
    if n > 150:
        v[150] += 40
    t0 = 1_400_000_000 // 300 * C
    return [t0 + i * C for i in range(n)], v


def test_rows_match_the_live_engine(tmp_path: Path) -> None:
    write_model(tmp_path / "models", SPEC)
    ts, v = _data()
    settings = settings_for(tmp_path, tmp_path / "models", anomaly={"min_count": 1, "window": 1, "threshold": 0.9999})
    rows = backtest_frame(tmp_path / "models", "bt", ts, [[x] for x in v], ["value"], settings)
    assert len(rows) == len(ts)
    assert rows[0].status == "warming" and rows[0].score is None
    assert all(r.score is not None and 0 <= r.score <= 1 for r in rows[20:])
    fired = [i for i, r in enumerate(rows) if r.event == "firing"]
    assert fired and fired[0] == 150
    # The same readings through a hand-driven engine give the same scores.
    eng = Engine(settings, ModelRegistry(tmp_path / "models"), None, Metrics())
    scores = []
    for t, x in zip(ts, v, strict=True):
        eng.accept([Reading(StreamKey("backtest", "value"), t, float(x))])
        eng.tick(t)
        s = eng.stream("backtest/value")
        scores.append(s.score if s is not None and s.status != "warming" else None)
    assert scores == [r.score for r in rows]


def test_as_steps_ignores_irregular_spacing(tmp_path: Path) -> None:
    write_model(tmp_path / "models", SPEC)
    ts, v = _data(60)
    irregular = [t + (i % 3) * 7 * 10**9 + (i * 60 * 10**9) for i, t in enumerate(ts)]  # drifting, uneven
    regular = backtest_frame(tmp_path / "models", "bt", ts, [[x] for x in v], ["value"])
    stepped = backtest_frame(tmp_path / "models", "bt", irregular, [[x] for x in v], ["value"], as_steps=True)
    assert [r.score for r in stepped] == [r.score for r in regular]
    assert [r.ts_ns for r in stepped] == irregular


def test_multivariate_needs_its_columns(tmp_path: Path) -> None:
    write_model(tmp_path / "models", KitSpec(name="mv", features=("a", "b"), warmup_steps=2))
    with pytest.raises(ValueError, match="missing"):
        backtest_frame(tmp_path / "models", "mv", [0], [[1.0]], ["a"])
    rows = backtest_frame(tmp_path / "models", "mv", [60 * 10**9 * i for i in range(1, 6)],
                          [[1.0, 2.0]] * 5, ["a", "b"])
    assert [r.stream for r in rows] == ["backtest"] * 5 and rows[-1].status == "ok"


def test_command_writes_csv(tmp_path: Path) -> None:
    write_model(tmp_path / "models", SPEC)
    ts, v = _data(80)
    src = tmp_path / "in.csv"
    with src.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "value"])
        for t, x in zip(ts, v, strict=True):
            w.writerow([f"{t // 10**9}", "bad" if t == ts[40] else f"{x}"])
    out = tmp_path / "out.csv"
    rc = main(["backtest", "--model", "bt", "--models-dir", str(tmp_path / "models"), "--csv", str(src),
               "--out", str(out), "--threshold", "0.999"])
    assert rc == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert len(rows) == 80 and rows[-1]["status"] == "ok" and rows[-1]["score"] != ""
    assert rows[40]["value"] == ""  # the bad cell is a missing value; the row is kept
    assert main(["backtest", "--model", "nope", "--models-dir", str(tmp_path / "models"), "--csv", str(src)]) == 2


def test_parse_time() -> None:
    assert parse_time("1970-01-01 00:00:01") == 10**9
    assert parse_time("1970-01-01T00:00:01Z") == 10**9
    assert parse_time("1.5") == 1_500_000_000
    assert parse_time("1500") == 1_500_000_000_000
    assert parse_time("1400000000000") == 1_400_000_000_000_000_000


@pytest.mark.bench_data
def test_nab_file_through_backtest(tmp_path: Path, shared_data: Path) -> None:
    from service.backtest import read_csv

    write_model(tmp_path / "models", KitSpec(name="nab", cadence_s=300, hidden=8, warmup_steps=20,
                                             mean=(80.0,), std=(10.0,)))
    ts, vals, cols = read_csv(shared_data / "nab/data/artificialWithAnomaly/art_daily_jumpsup.csv", "timestamp", None)
    rows = backtest_frame(tmp_path / "models", "nab", ts, vals, cols)
    assert len(rows) == len(ts) == 4032
    assert all(r.score is None or 0 <= r.score <= 1 for r in rows)


def test_command_replays_stored_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.config import StoreSettings
    from service.store import open_store

    write_model(tmp_path / "models", SPEC)
    ts, v = _data(60)
    url = f"sqlite:///{tmp_path}/h.db"
    store = open_store(StoreSettings(url=url, spool_dir=tmp_path / "spool"))  # type: ignore[call-arg]
    store.write([Reading(StreamKey("pump", "value"), t, float(x)) for t, x in zip(ts, v, strict=True)])
    store.close()
    monkeypatch.setenv("SENSORCAST_STORE__URL", "sqlite:///nowhere/else.db")  # --store wins
    out = tmp_path / "out.csv"
    rc = main(["backtest", "--model", "bt", "--models-dir", str(tmp_path / "models"), "--device", "pump",
               "--columns", "value", "--store", url, "--out", str(out)])
    assert rc == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert len(rows) == 60 and rows[-1]["status"] == "ok"
    assert float(rows[-1]["value"]) == pytest.approx(v[-1])
    assert main(["backtest", "--model", "bt", "--models-dir", str(tmp_path / "models"), "--device", "pump"]) == 2
