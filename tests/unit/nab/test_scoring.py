"""NAB scoring on tiny hand-computed cases, and the fast threshold sweep vs brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.nab.corpus import CostProfile, DataFile, probation_length
from evaluation.nab.scoring import (
    MAX_TP,
    build_sweep,
    score_at,
    score_corpus,
    threshold_curve,
)

STANDARD = CostProfile("standard", tp=1.0, fp=0.11, fn=1.0)
LOW_FN = CostProfile("reward_low_FN_rate", tp=1.0, fp=0.11, fn=2.0)
T0 = np.datetime64("2020-01-01T00:00:00", "s")


def make_file(name: str, n: int, windows: list[tuple[int, int]]) -> DataFile:
    ts = T0 + np.arange(n) * np.timedelta64(300, "s")
    return DataFile(name, ts, np.zeros(n), tuple((ts[a], ts[b]) for a, b in windows))


def sig(p: float) -> float:
    return 2.0 / (1.0 + math.exp(5.0 * p)) - 1.0


def raw_with(detect_rows: list[int], n: int = 100, windows: list[tuple[int, int]] | None = None,
             profile: CostProfile = STANDARD) -> tuple[float, float]:
    f = make_file("cat/a.csv", n, [(40, 49)] if windows is None else windows)
    s = np.zeros(n)
    s[detect_rows] = 1.0
    r = score_corpus([f], {f.name: s}, profile)
    return r.raw, r.score


def test_probation_length() -> None:
    assert probation_length(100) == 15
    assert probation_length(4032) == 604
    assert probation_length(22695) == 750


def test_detection_at_window_start_earns_full_reward() -> None:
    raw, norm = raw_with([40])
    assert raw == pytest.approx(1.0)
    assert norm == pytest.approx(100.0)


def test_detection_in_window_middle() -> None:
    # Row 45 of window 40..49: position -(49 - 45 + 1) / 10 = -0.5.
    raw, norm = raw_with([45])
    assert raw == pytest.approx(sig(-0.5) / sig(-1.0))
    assert raw == pytest.approx(0.84828 / 0.98661, abs=1e-4)
    assert norm == pytest.approx(100 * (raw + 1) / 2)


def test_detection_at_window_end_earns_little() -> None:
    raw, _ = raw_with([49])
    assert raw == pytest.approx(sig(-0.1) / MAX_TP)
    assert 0.2 < raw < 0.3


def test_window_counts_once_with_its_earliest_detection() -> None:
    raw, _ = raw_with([42, 43, 47, 49])
    assert raw == pytest.approx(sig(-0.8) / MAX_TP)


def test_false_positive_before_first_window_costs_full_fp_weight() -> None:
    raw, _ = raw_with([20, 40])
    assert raw == pytest.approx(1.0 - 0.11)


def test_false_positive_just_after_window_costs_less_than_far_after() -> None:
    near, _ = raw_with([40, 50])  # one row past the end: position 1 / (10 - 1)
    far, _ = raw_with([40, 80])  # 31 rows past: position >= 3, full cost
    assert near == pytest.approx(1.0 + 0.11 * sig(1 / 9))
    assert far == pytest.approx(1.0 - 0.11)
    assert near > far


def test_missed_window_costs_fn_weight() -> None:
    raw, norm = raw_with([20], profile=LOW_FN)  # threshold optimisation prefers not firing
    assert raw == pytest.approx(-2.0)
    assert norm == pytest.approx(0.0)


def test_probationary_rows_are_not_scored() -> None:
    # Row 10 is in the probationary period (first 15 rows): its detection is free.
    raw, _ = raw_with([10, 40])
    assert raw == pytest.approx(1.0)


def test_window_inside_probation_is_not_counted() -> None:
    f = make_file("cat/a.csv", 100, [(2, 8), (40, 49)])
    r = score_corpus([f], {f.name: np.zeros(100)}, STANDARD)
    assert r.null == pytest.approx(-1.0)
    assert r.perfect == pytest.approx(1.0)


def test_file_without_windows_only_costs_false_positives() -> None:
    g = make_file("cat/none.csv", 100, [])
    f = make_file("cat/a.csv", 100, [(40, 49)])
    s_f = np.zeros(100)
    s_f[40] = 0.9
    s_g = np.zeros(100)
    s_g[[30, 60, 70]] = 0.8
    s_g[90] = 0.95  # above the detection: firing at 0.9 costs one FP (0.11) and gains 2
    r = score_corpus([f, g], {f.name: s_f, g.name: s_g}, STANDARD)
    assert r.threshold == pytest.approx(0.9)
    assert r.raw == pytest.approx(1.0 - 0.11)
    assert r.per_file[g.name].fp_rows == 1
    assert r.per_file[g.name].score == pytest.approx(-0.11)


def test_null_detector_scores_zero_and_perfect_scores_hundred() -> None:
    files = [make_file("c/a.csv", 200, [(50, 69), (120, 139)]), make_file("c/b.csv", 300, [(100, 129)])]
    null = score_corpus(files, {f.name: np.full(len(f.values), 0.5) for f in files}, STANDARD)
    assert null.score == pytest.approx(0.0)
    assert null.raw == pytest.approx(-3.0)
    perfect = {f.name: np.zeros(len(f.values)) for f in files}
    perfect["c/a.csv"][[50, 120]] = 1.0
    perfect["c/b.csv"][100] = 1.0
    for prof in (STANDARD, LOW_FN):
        assert score_corpus(files, perfect, prof).score == pytest.approx(100.0)


def test_threshold_is_optimised_over_the_whole_corpus() -> None:
    # File a wants a low threshold (detection at 0.3); file b has an FP at 0.5 that a low
    # threshold also triggers. Net gain of 0.3: +2 (window) - 0.11 (FP) -> take it.
    a = make_file("c/a.csv", 100, [(40, 49)])
    b = make_file("c/b.csv", 100, [])
    sa = np.zeros(100)
    sa[40] = 0.3
    sb = np.zeros(100)
    sb[60] = 0.5
    r = score_corpus([a, b], {a.name: sa, b.name: sb}, STANDARD)
    assert r.threshold == pytest.approx(0.3)
    assert r.raw == pytest.approx(1.0 - 0.11)


def test_rejects_scores_outside_unit_interval() -> None:
    f = make_file("c/a.csv", 100, [(40, 49)])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        score_corpus([f], {f.name: np.full(100, 1.5)}, STANDARD)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    levels=st.integers(2, 12),
    profile=st.sampled_from([STANDARD, LOW_FN, CostProfile("fp", 1.0, 0.22, 1.0)]),
)
def test_fast_sweep_equals_brute_force_at_every_threshold(seed: int, levels: int, profile: CostProfile) -> None:
    rng = np.random.default_rng(seed)
    files = [
        make_file("c/a.csv", 120, [(30, 41), (80, 95)]),
        make_file("c/b.csv", 90, [(20, 25)]),
        make_file("c/c.csv", 60, []),
    ]
    # Few distinct levels so ties between rows are common.
    scores = {f.name: rng.integers(0, levels, len(f.values)) / (levels - 1) for f in files}
    sweep = build_sweep(files, scores, profile)
    thresholds, totals = threshold_curve(sweep, profile)
    assert np.all(np.diff(thresholds[1:]) < 0)
    for t, total in zip(thresholds, totals, strict=True):
        brute = sum(fs.score for fs in score_at(sweep, profile, t).values())
        assert total == pytest.approx(brute)
