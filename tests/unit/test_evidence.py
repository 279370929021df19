"""service/anomaly/evidence.py: tail probabilities, the four parts, and what each one catches."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.anomaly.evidence import (
    INSTANT,
    LAG,
    MEAN,
    VARIANCE,
    Calibration,
    EvidenceRows,
    log10_chi2_sf,
    log10_norm_sf,
)


def test_tails_match_known_values_and_never_saturate() -> None:
    z = np.array([0.0, 1.0, 1.959964, 3.0, 5.0, 10.0, 40.0])
    want = [-math.log10(0.5 * math.erfc(v / math.sqrt(2))) for v in z[:-1]]
    got = log10_norm_sf(z)
    assert np.allclose(got[:-1], want, atol=0.02)
    assert got[-1] > 300 and np.all(np.diff(got) > 0)  # far out: still ordered, not inf
    # chi2, 1 dof: P(chi2 > 3.84) = 0.05, P(chi2 > 10.83) = 0.001
    assert np.allclose(log10_chi2_sf(np.array([3.841, 10.828]), np.array([1.0, 1.0])), [1.301, 3.0], atol=0.01)
    # chi2, 10 dof: P(chi2 > 18.31) = 0.05, P(chi2 > 29.59) = 0.001 (Wilson-Hilferty)
    assert np.allclose(log10_chi2_sf(np.array([18.307, 29.588]), np.array([10.0, 10.0])), [1.301, 3.0], atol=0.05)


def run(e: EvidenceRows, actual: np.ndarray, expected: np.ndarray, fire_log: float = 4.0) -> np.ndarray:
    """Step one row through ``actual`` (T, Fo); returns the parts per step (T, 4)."""
    out = []
    rows = np.array([0])
    for a, x in zip(actual, expected, strict=True):
        e.step(rows, a[None, :], x[None, :], None, np.array([True]), np.array([fire_log]))
        e.remember(rows, np.repeat(x[None, None, :], 4, axis=1), None)
        out.append(e.last_parts[0].copy())
    return np.array(out)


def fresh(n_out: int = 1, precision: np.ndarray | None = None) -> EvidenceRows:
    e = EvidenceRows(n_out, probabilistic=False, calibration=Calibration(precision))
    e.grow(1)
    return e


def test_white_noise_stays_quiet_and_each_fault_lights_its_part() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    noise = rng.normal(0, 1, (n, 1))
    parts = run(fresh(), noise, np.zeros((n, 1)))
    ok = parts[100:]
    assert np.nanquantile(ok.max(axis=1), 0.999) < 4.5  # about 1 step in 10^4 beyond 4 per part
    # A spike: the instant part, at once.
    x = rng.normal(0, 1, (400, 1))
    x[300] += 12
    p = run(fresh(), x, np.zeros((400, 1)))
    assert p[300, INSTANT] > 20 and p[300, INSTANT] == p[300].max()
    # A small sustained bias (1 sigma) never looks extreme in one step; the mean part builds up.
    x = rng.normal(0, 1, (500, 1))
    x[300:] += 1.0
    p = run(fresh(), x, np.zeros((500, 1)))
    assert np.nanmax(p[330:, MEAN]) > 5 and np.nanmax(p[330:, MEAN]) > np.nanmax(p[330:, INSTANT])
    # A variance burst: the variance part.
    x = rng.normal(0, 1, (500, 1))
    x[300:340] *= 5
    p = run(fresh(), x, np.zeros((500, 1)))
    assert np.nanmax(p[300:340, VARIANCE]) > 6


def test_the_lag_part_sees_a_ramp_the_one_step_forecast_keeps_up_with() -> None:
    # A persistence forecaster: one step behind. On a ramp of 2 per step its one-step
    # residual is 2 (ordinary next to the noise); forecasts made 2-4 steps earlier miss by 6-10.
    rng = np.random.default_rng(1)
    n = 400
    x = rng.normal(0, 1, (n, 1))
    x[300:, 0] += np.arange(100) * 2.0
    forecast = np.roll(x, 1, axis=0) + rng.normal(0, 0.1, (n, 1))
    p = run(fresh(), x[1:], forecast[1:])
    assert np.nanquantile(p[100:298, LAG], 0.99) < 3
    assert np.nanmax(p[300:310, LAG]) > 6 and np.nanmax(p[300:310, LAG]) > np.nanmax(p[300:310, INSTANT]) + 3


def test_mahalanobis_sees_a_broken_correlation_and_names_the_feature() -> None:
    rng = np.random.default_rng(2)
    n = 600
    common = rng.normal(0, 1, n)
    resid = np.stack([common + 0.1 * rng.normal(0, 1, n), common + 0.1 * rng.normal(0, 1, n)], axis=1)
    corr = np.corrcoef(resid[:300].T)
    e = fresh(2, np.linalg.inv(corr))
    broken = resid.copy()
    broken[500] = [1.5, -1.5]  # each feature alone is ordinary; together they are not
    rows = np.array([0])
    out = None
    for t in range(n):
        ev = e.step(rows, broken[t][None, :], np.zeros((1, 2)), None, np.array([True]), np.array([4.0]))
        if t == 500:
            out = ev
    assert out is not None
    assert out.instant[0] > 8
    assert out.share[0].sum() == pytest.approx(1.0)
    # The identity would see nothing unusual in two values of ordinary size.
    e2 = fresh(2)
    for t in range(n):
        ev2 = e2.step(rows, broken[t][None, :], np.zeros((1, 2)), None, np.array([True]), np.array([4.0]))
        if t == 500:
            assert ev2.instant[0] < 3


def test_anomalies_do_not_teach_the_spread() -> None:
    e = fresh()
    rows = np.array([0])
    rng = np.random.default_rng(3)
    for _ in range(200):
        e.step(rows, rng.normal(0, 1, (1, 1)), np.zeros((1, 1)), None, np.array([True]), np.array([4.0]))
    before = e.sq_ewma[0].copy()
    for _ in range(20):  # a run of huge readings
        e.step(rows, np.array([[50.0]]), np.zeros((1, 1)), None, np.array([True]), np.array([4.0]))
    assert np.array_equal(e.sq_ewma[0], before)
