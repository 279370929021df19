"""The fault benchmark: its scoring on hand-made alerts, and a small run through the engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tools.bench import faultmetrics as fm
from tools.bench.faults import BenchConfig, bindings, plan_streams, run, run_bench
from tools.sim.signals import QUANTITIES

ROOT = Path(__file__).resolve().parents[2]


def mark(stream: str, step: int, state: str = "firing", check: str = "anomaly", kind: str = "") -> fm.AlertMark:
    return fm.AlertMark(stream, step, state, check, kind)


def test_event_matching_delay_naming_and_coverage() -> None:
    events = [
        fm.FaultEvent("a", "spike", 100, 101, 10.0),
        fm.FaultEvent("a", "level_shift", 200, 260, 7.0),
        fm.FaultEvent("b", "stuck", 100, 160, 60.0),
        fm.FaultEvent("b", "silent", 400, 450, 45.0),
    ]
    marks = [
        mark("a", 100, kind="spike"), mark("a", 101, "resolved"),  # spike: on the reading itself
        mark("a", 212, kind="drift"), mark("a", 240, "resolved"),  # found late, named wrong
        mark("b", 131, check="stuck", kind="stuck"), mark("b", 170, "resolved", check="stuck"),
        mark("b", 456, check="silent", kind="silent"),  # after the slack: a miss (never resolves)
        mark("c", 100),  # another stream's alert counts for nothing here
    ]
    r = fm.match_events(events, marks, end_step=500, slack=5)
    assert [x.detected for x in r] == [True, True, True, False]
    assert [x.delay for x in r] == [0, 12, 31, None]
    assert [x.named for x in r] == [True, False, True, False]
    assert r[0].covered == 1.0
    assert r[1].covered == pytest.approx(28 / 60)
    assert r[2].covered == pytest.approx(29 / 60)
    assert r[3].covered == 0.0  # fired after the event (and the stuck episode ended before it)
    assert r[2].first_check == "stuck" and r[3].first_check == ""


def test_an_alert_before_the_event_does_not_detect_it_but_covers_it() -> None:
    ev = fm.FaultEvent("a", "drift", 100, 120, 6.0)
    [r] = fm.match_events([ev], [mark("a", 90), mark("a", 110, "resolved")], end_step=200, slack=5)
    assert not r.detected and r.covered == pytest.approx(0.5)


def test_an_alert_on_the_jump_back_is_late_not_a_detection() -> None:
    events = [fm.FaultEvent("a", "drift", 100, 200, 6.0), fm.FaultEvent("b", "drift", 100, 200, 6.0),
              fm.FaultEvent("c", "drift", 100, 200, 6.0)]
    marks = [mark("a", 200), mark("b", 199), mark("c", 200 + fm.AFTER_END)]
    r = fm.match_events(events, marks, end_step=400, slack=0)
    assert [(x.detected, x.after_end) for x in r] == [(False, True), (True, False), (False, False)]
    s = fm.summarise(r, {}, 1.0)["kinds"]["drift"]
    assert s["event_recall"] == pytest.approx(1 / 3) and s["after_end"] == pytest.approx(1 / 3)


def test_firing_intervals_per_check() -> None:
    marks = [mark("a", 10), mark("a", 12, check="stuck"), mark("a", 15, "resolved"),
             mark("a", 20, "resolved", check="stuck"), mark("a", 30), mark("a", 30, "resolved")]
    # A resolution and a new firing at the same step: the old episode ends, the new one runs on.
    assert sorted(fm.firing_intervals(marks, 50)["a"]) == [(10, 15), (12, 20), (30, 50)]


def test_predicted_breach_must_come_before_the_crossing() -> None:
    early = fm.FaultEvent("a", "degradation", 100, 400, 4.0, crossing=350)
    late = fm.FaultEvent("b", "degradation", 100, 400, 4.0, crossing=350)
    never = fm.FaultEvent("c", "degradation", 100, 400, 4.0, crossing=350)
    marks = [mark("a", 300, check="predicted_breach", kind="predicted_breach"),
             mark("b", 350, check="predicted_breach"), mark("c", 320, check="anomaly", kind="drift")]
    r = fm.match_events([early, late, never], marks, 500, 5)
    assert [x.predicted_before for x in r] == [True, False, False]
    assert [x.named for x in r] == [True, True, False]
    s = fm.summarise(r, {}, 1.0)["kinds"]["degradation"]
    assert s["predicted_before_crossing"] == pytest.approx(1 / 3)
    assert s["event_recall"] == 1.0


def test_false_alert_rate_counts_clean_streams_after_warmup() -> None:
    marks = [mark("clean1", 50), mark("clean1", 500), mark("clean1", 510, "resolved"),
             mark("clean2", 900, check="out_of_range"), mark("faulty", 700)]
    counts = fm.false_alerts(marks, {"clean1", "clean2"}, warmup=300)
    assert counts == {"anomaly": 1, "out_of_range": 1}
    s = fm.summarise([], counts, clean_hours=500.0)
    assert s["false_alerts"] == 2 and s["false_alerts_per_1k_clean_stream_hours"] == pytest.approx(4.0)
    events = [fm.FaultEvent("faulty", "spike", 650, 651, 6.0)]
    assert fm.unmatched([*marks, mark("faulty", 2000)], events, settle=60, warmup=300) == 1


def test_summary_delays_and_magnitudes() -> None:
    evs = [fm.FaultEvent(f"s{i}", "spike", 100, 101, m) for i, m in enumerate((6.0, 6.0, 10.0, 10.0))]
    marks = [mark("s0", 100), mark("s1", 102), mark("s2", 101)]
    s = fm.summarise(fm.match_events(evs, marks, 200, 5), {}, 10.0)["kinds"]["spike"]
    assert s["event_recall"] == 0.75 and s["by_magnitude"] == {"6": 1.0, "10": 0.5}
    assert s["delay_median"] == 1.0 and s["delay_p90"] == pytest.approx(float(np.percentile([0, 2, 1], 90)))
    assert s["first_checks"] == {"anomaly": 3}


def test_plan_places_every_kind_with_quiet_time_and_limits() -> None:
    cfg = BenchConfig(streams_per_level=1, clean=2, steps=2000)
    plans = plan_streams(cfg)
    assert len(plans) == 3 * len(cfg.kinds) + 2
    kinds = {e.kind for p in plans for e in p.events}
    assert kinds == set(cfg.kinds)
    for p in plans:
        assert not p.events if p.clean else p.events
        ends = [e.end for e in p.events]
        starts = [e.start for e in p.events]
        assert all(s >= cfg.warmup for s in starts) and all(e + cfg.slack < cfg.steps for e in ends)
        assert all(b - a >= 400 for a, b in zip(ends, starts[1:], strict=False))
        for e in p.events:
            if e.kind == "degradation":
                assert e.crossing is not None and e.start < e.crossing < e.end
    binds, carries = bindings(cfg, plans)
    assert [(b.device, b.quantity) for b in binds] == [(p.spec.device, p.spec.quantity.name) for p in plans]
    if carries:  # limits: the quantity's physical ones and the stream's operating ones
        rules = binds[0].rules
        q = QUANTITIES[binds[0].quantity]
        assert rules.min == q.lower and rules.max == q.upper
        assert rules.lower is not None or rules.upper is not None


def test_a_small_run_through_the_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from tools.bench.faults import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    out = tmp_path / "faults.json"
    args = p.parse_args(["--models-dir", str(ROOT / "models"), "--streams-per-level", "1", "--clean", "3",
                         "--steps", "1200", "--kinds", "spike,silent,degradation", "--out", str(out)])
    assert run(args) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert json.loads(printed.strip().splitlines()[-1]) == report
    assert report["streams"] == 12 and report["clean_streams"] == 3
    assert set(report["kinds"]) == {"spike", "silent", "degradation"}
    assert report["clean_stream_hours"] == pytest.approx(3 * 900 / 3600)
    assert "predicted_breach before the crossing" in printed and "false alerts on clean streams" in printed
    for row in report["kinds"].values():
        assert 0.0 <= row["event_recall"] <= 1.0 and row["events"] >= 3


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from tools.bench.faults import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert run(p.parse_args(["--kinds", "spike,meteor"])) == 2
    assert "meteor" in capsys.readouterr().err


def test_run_bench_reports_its_time() -> None:
    r = run_bench(BenchConfig(models_dir=ROOT / "models", streams_per_level=1, clean=1, steps=400,
                              kinds=("spike",)))
    assert r["seconds_total"] >= r["seconds_engine"] >= 0 and r["cpu_seconds"] > 0 and r["cpus"] >= 1
