"""The ETTh1 table is rendered from the results file: missing cells say how to fill them,
runs with other settings say how to repeat them, and the copies in the docs are current."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from training.bench_ett import config_for
from training.ett_table import END, START, baselines, generated, main, render, splice

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "docs" / "results" / "ett.json"


def _row(mse: float, seconds: float, lags: int = 0, **model: Any) -> dict[str, Any]:
    cfg = config_for("gru", 96, "ETTh1.csv", 96, 12.0, None, lags)
    cfg = replace(cfg, model=replace(cfg.model, **model))
    return {"test_mse": mse, "train_seconds": seconds, "stopped": "epochs done",
            "config": {"model": repr(cfg.model), "train": repr(cfg.train)}}


def test_missing_cells_say_not_run_with_the_command_that_fills_them() -> None:
    doc = {"results": {"gru-stream-lags0-H96": _row(0.4152, 95.0)}}
    table = render(doc)
    gru = next(line for line in table.splitlines() if line.startswith("| `gru`"))
    assert gru.split(" | ")[1:] == ["not run", "0.415 (1.6 min)", "not run", "not run |"]
    assert "`make bench-ett CELLS=gru HORIZONS=96 LAGS=96`" in table
    assert "`make bench-ett CELLS=segrnn HORIZONS=336`" in table  # window models have no LAGS
    segrnn = next(line for line in table.splitlines() if line.startswith("| `segrnn`"))
    assert segrnn.count("n/a") == 2  # no lag-free variant of a window model
    assert "[1]" not in table  # the run used the current settings: nothing to add
    assert "| *published:* SegRNN, L=96 (b) | 0.368 |  | 0.444 |  |" in table
    assert "| repeat-last (ours) | – |" in table  # no baselines computed yet: shown as such


def test_a_run_with_other_settings_gets_the_command_that_repeats_it() -> None:
    doc = {"results": {"gru-stream-lags0-H96": _row(0.4457, 57.2, hidden=128)}}
    table = render(doc)
    assert "0.446 (1.0 min) [1]" in table
    assert '[1] `make bench-ett CELLS=gru HORIZONS=96 LAGS=0 ETT_ARGS="--set model.hidden=128"`' in table


def test_a_horizon_column_appears_once_a_run_exists() -> None:
    assert "H=720" not in render({"results": {}})
    assert "H=720, lag-free" in render({"results": {"gru-stream-lags0-H720": _row(0.6, 60.0)}})


def test_splice_replaces_only_between_the_markers() -> None:
    text = f"before\n{START}\nold table\n{END}\nafter\n"
    new = splice(text, "| new |\n")
    assert new.startswith("before\n") and new.endswith(f"{END}\nafter\n")
    assert generated(new) == "| new |\n" and "old table" not in new
    with pytest.raises(ValueError, match="markers"):
        splice("no markers here", "x")


@pytest.mark.parametrize("doc", ["README.md", "docs/benchmarks.md"])
def test_the_docs_carry_the_table_rendered_from_the_results(doc: str) -> None:
    rendered = render(json.loads(RESULTS.read_text()))
    assert generated((REPO / doc).read_text()) == rendered, (
        f"{doc} is stale: python -m training.ett_table --write README.md docs/benchmarks.md")


def test_cli_writes_the_table_into_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "ett.json"
    results.write_text(json.dumps({"results": {"gru-stream-lags96-H96": _row(0.389, 145.0, lags=96)}}))
    page = tmp_path / "page.md"
    page.write_text(f"# page\n{START}\n{END}\n")
    assert main(["--results", str(results), "--write", str(page)]) == 0
    assert generated(page.read_text()) == capsys.readouterr().out
    assert "0.389 (2.4 min)" in page.read_text()


@pytest.mark.bench_data
def test_baselines_match_the_protocol_figures(shared_data: Path) -> None:
    b = baselines(str(shared_data / "ett" / "ETTh1.csv"), (96,))["H96"]
    recorded = json.loads(RESULTS.read_text())["results"]["gru-stream-lags96-H96"]
    assert b["repeat_last"] == pytest.approx(recorded["repeat_last_test_mse"], abs=1e-6)
    assert b["seasonal_naive"] == pytest.approx(recorded["seasonal_naive_test_mse"], abs=1e-6)
    assert b["repeat_last"] > b["mean"] > b["seasonal_naive"]
