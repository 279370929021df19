"""Score: residual in units of spread, mapped to [0, 1]; anomalies stay out of the baseline."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from service.anomaly.scoring import SpreadScorer, erf, score_from_z, z_for_score

finite = st.floats(-1e6, 1e6)


def test_erf_matches_math() -> None:
    xs = np.linspace(-5, 5, 101)
    np.testing.assert_allclose(erf(xs), [math.erf(x) for x in xs], atol=2e-7)


@given(z=st.floats(0, 50), w=st.floats(0, 50))
def test_score_in_unit_interval_and_monotone(z: float, w: float) -> None:
    a, b = float(score_from_z(z)), float(score_from_z(w))
    assert 0.0 <= a <= 1.0
    if z < w:
        assert a <= b


@given(s=st.floats(0.01, 0.9999))
def test_z_for_score_inverts(s: float) -> None:
    assert abs(float(score_from_z(z_for_score(s))) - s) < 1e-6


@given(actual=finite, expected=finite, scale=st.floats(1e-3, 1e3))
def test_scale_mode(actual: float, expected: float, scale: float) -> None:
    sc = SpreadScorer(1, min_residuals=0)
    sc.grow(1)
    r = np.array([0])
    score, spread = sc.score(r, np.array([[actual]]), np.array([[expected]]), np.array([[scale]]))
    assert spread[0, 0] == scale
    assert abs(score[0] - float(score_from_z(abs(actual - expected) / scale))) < 1e-9


def test_learnt_spread_needs_history_then_scores() -> None:
    sc = SpreadScorer(1, min_residuals=5)
    sc.grow(2)
    rows = np.array([0, 1])
    rng = np.random.default_rng(0)
    for _ in range(4):
        s, _ = sc.score(rows, rng.normal(size=(2, 1)), np.zeros((2, 1)), None)
        assert np.isnan(s).all()  # no opinion yet
        sc.learn(rows, rng.normal(size=(2, 1)), np.zeros((2, 1)))
    for _ in range(200):
        sc.learn(rows, rng.normal(size=(2, 1)), np.zeros((2, 1)))
    # sqrt(pi/2) * E|r| estimates sigma = 1 for unit normal residuals
    assert np.allclose(sc.spread(rows, None), 1.0, atol=0.25)
    s, _ = sc.score(rows, np.array([[0.1], [8.0]]), np.zeros((2, 1)), None)
    assert s[0] < 0.5 and s[1] > 0.999


def test_only_learnt_rows_move_the_baseline() -> None:
    sc = SpreadScorer(1, min_residuals=1)
    sc.grow(2)
    sc.learn(np.array([0, 1]), np.array([[1.0], [1.0]]), np.zeros((2, 1)))
    before = sc.abs_ewma.copy()
    sc.learn(np.array([1]), np.array([[100.0]]), np.zeros((1, 1)))
    assert sc.abs_ewma[0, 0] == before[0, 0] and sc.abs_ewma[1, 0] > before[1, 0]


def test_multivariate_takes_worst_feature_and_ignores_nan() -> None:
    sc = SpreadScorer(2, min_residuals=0)
    sc.grow(1)
    s, _ = sc.score(np.array([0]), np.array([[0.0, np.nan]]), np.zeros((1, 2)), np.ones((1, 2)))
    assert s[0] == 0.0
    s, _ = sc.score(np.array([0]), np.array([[0.0, 3.0]]), np.zeros((1, 2)), np.ones((1, 2)))
    assert abs(s[0] - float(score_from_z(3.0))) < 1e-12
    s, _ = sc.score(np.array([0]), np.array([[np.nan, np.nan]]), np.zeros((1, 2)), np.ones((1, 2)))
    assert np.isnan(s[0])
