"""``python -m evaluation.nab`` end to end on a tiny synthetic corpus, and the doctests
of the online scorers it relies on."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest

import evaluation.nab.likelihood
import service.anomaly.edge
import service.anomaly.novelty
import service.anomaly.peak
import service.anomaly.surprise
from evaluation.nab import bench as bench_nab

PROFILES = {
    "standard": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.11, "tnWeight": 1.0}},
    "reward_low_FP_rate": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.22, "tnWeight": 1.0}},
    "reward_low_FN_rate": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 2.0, "fpWeight": 0.11, "tnWeight": 1.0}},
}


def write_corpus(root: Path) -> None:
    rng = np.random.default_rng(0)
    ts = np.datetime64("2020-01-01T00:00:00") + np.arange(1200) * np.timedelta64(5, "m")
    stamps = [str(t).replace("T", " ") for t in ts]
    windows = {}
    for name, spike in (("a", 1000), ("b", None)):
        v = 20 + 3 * np.sin(np.arange(1200) / 30) + rng.normal(0, 0.3, 1200)
        if spike is not None:
            v[spike:] += 15  # a level shift well outside the seen range
        path = root / "data" / "synthetic" / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("timestamp,value\n" + "".join(f"{s},{x:.4f}\n" for s, x in zip(stamps, v, strict=True)))
        windows[f"synthetic/{name}.csv"] = [] if spike is None else [
            [stamps[spike - 30] + ".000000", stamps[spike + 30] + ".000000"]]
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    (root / "profiles.json").write_text(json.dumps(PROFILES))


def test_bench_entry_scores_writes_results_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_corpus(tmp_path / "nab")
    out = tmp_path / "nab.json"
    # persistence: no training here (the trained GRU's path: tests/unit/nab/test_trained.py)
    rc = bench_nab.main(["--data", str(tmp_path / "nab"), "--detectors", "persistence,windowed_gaussian",
                         "--results", str(tmp_path / "results"), "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["files"] == 2 and doc["windows"] == 1
    sc = doc["detectors"]["persistence"]["standard"]
    assert sc["windows_detected"] == 1 and sc["false_positive_rows"] == 0
    assert sc["score"] > 80  # found early in its window (the shift is at the window's middle)
    assert (tmp_path / "results" / "persistence" / "synthetic" / "persistence_a.csv").is_file()
    assert "persistence (ours)" in capsys.readouterr().out


def test_bench_entry_refuses_a_missing_corpus(tmp_path: Path) -> None:
    assert bench_nab.main(["--data", str(tmp_path)]) == 2


@pytest.mark.parametrize("module", [service.anomaly.edge, evaluation.nab.likelihood,
                                    service.anomaly.novelty, service.anomaly.peak, service.anomaly.surprise])
def test_docstring_examples_run(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0
