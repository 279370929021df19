"""BreachStage: predicted_breach fires before a limit is crossed, follows, and resolves."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from service.anomaly.breach import normal_cdf, z_of
from service.config import AnomalySettings, StreamRules
from service.streams.breach_stage import CHECK, Breach, BreachStage
from service.streams.rules import ResolvedRules, resolve

H = 10
CADENCE_NS = 2_000_000_000  # 2 s: ETAs are steps x 2


def rules(features: list[str] | None = None, **kw: Any) -> ResolvedRules:
    return resolve(AnomalySettings(), None, StreamRules(**kw), features or ["t"], 2.0)


def stage(n_rows: int = 1, n_out: int = 1, out_in: list[int] | None = None, **kw: float) -> BreachStage:
    s = BreachStage(n_out, np.array(out_in or list(range(n_out)), np.int64), H, CADENCE_NS, **kw)  # type: ignore[arg-type]
    s.grow(n_rows)
    return s


def step(
    s: BreachStage, t: int, fc: np.ndarray, spread1: float | np.ndarray = 1.0, scale: np.ndarray | None = None,
    x: np.ndarray | None = None, rows: np.ndarray | None = None,
) -> tuple[list[Breach], list[Breach]]:
    """One assess of rows (default: 0..B-1) with forecasts ``fc`` (B, H, Fo)."""
    b = fc.shape[0]
    rows = np.arange(b) if rows is None else rows
    sp = np.broadcast_to(np.asarray(spread1, np.float64), (b, fc.shape[2])).copy()
    ts = np.full(b, t * CADENCE_NS, np.int64)
    return s.assess(rows, ts, fc, scale, sp, np.ones(b, bool), x)


def ramp_fc(value: float, slope: float) -> np.ndarray:
    """A forecast that extrapolates the trend: (1, H, 1)."""
    return (value + slope * np.arange(1, H + 1, dtype=np.float64)).reshape(1, H, 1)


def test_a_ramp_toward_the_upper_limit_fires_before_the_crossing_with_a_decreasing_eta() -> None:
    s = stage()
    s.configure(np.array([0]), [rules(upper=100.0)])
    fired_at, etas, resolved = None, [], []
    for t in range(60):
        v = 50.0 + 2.0 * t  # crosses 100 at t = 25 (26 > 100 from t = 26)
        f, r = step(s, t, ramp_fc(v, 2.0), spread1=1.0, x=np.array([[v]]))
        if f:
            assert fired_at is None
            fired_at = t
            assert f[0].side == "upper" and f[0].limit == 100.0 and f[0].feature == 0
            assert f[0].probability >= 0.9 and f[0].detail["side"] == "upper"
            # The forecast at the ETA is near the limit: the first step with P >= 0.9.
            assert f[0].expected > 100.0
        if s.firing[0]:
            etas.append(float(s.eta(np.array([0]))[0][0]))
        resolved += r
        if resolved:
            break
    assert fired_at is not None and fired_at < 25
    # Fired about H steps ahead: the horizon reaches the limit at t = 20 (v + 2 H = 100 + ...).
    assert fired_at >= 25 - H
    assert etas == sorted(etas, reverse=True) and etas[0] > etas[-1] > 0
    assert etas[0] == pytest.approx((25 - fired_at + 1) * 2.0, abs=2 * 2.0)
    assert len(resolved) == 1 and resolved[0].detail["reason"] == "crossed" and math.isnan(resolved[0].eta_s)
    assert float(resolved[0].detail["value"]) > 100.0
    assert not s.firing[0] and math.isnan(s.eta(np.array([0]))[0][0])


def test_after_a_crossing_no_new_prediction_fires_while_the_value_stays_beyond() -> None:
    s = stage()
    s.configure(np.array([0]), [rules(upper=100.0)])
    for t in range(5):
        v = 110.0 + t
        f, r = step(s, t, ramp_fc(v, 1.0), x=np.array([[v]]))
        assert f == [] and r == []
    # Back inside, still heading up: announced again once it stayed inside for a horizon.
    fired = [t for t in range(5, 5 + 2 * H) if step(s, t, ramp_fc(95.0, 1.0), x=np.array([[95.0]]))[0]]
    assert fired == [5 + H - 1]


def test_a_ramp_toward_the_lower_limit_fires_on_the_lower_side() -> None:
    s = stage()
    s.configure(np.array([0]), [rules(lower=0.0, upper=100.0)])
    f, _ = step(s, 0, ramp_fc(10.0, -2.0), spread1=0.5)
    assert len(f) == 1 and f[0].side == "lower" and f[0].limit == 0.0
    assert f[0].eta_s == pytest.approx(6 * 2.0)  # 10 - 2h < 0 beyond 0.9 at h = 6 (mean -2, sd 1.2)


def test_a_flat_series_far_from_its_limits_never_fires() -> None:
    s = stage(n_rows=3)
    s.configure(np.arange(3), [rules(lower=0.0, upper=100.0)] * 3)
    rng = np.random.default_rng(0)
    for t in range(300):
        fc = 50.0 + rng.normal(0, 2.0, size=(3, H, 1))
        f, r = step(s, t, fc, spread1=3.0, x=fc[:, 0, :])
        assert f == [] and r == []
    assert s.computed == 900 and not s.firing.any()


def test_the_probability_threshold_is_respected() -> None:
    # Flat forecast whose every step is beyond 100 with probability 0.85.
    z85 = z_of(0.85)
    fc = np.full((1, H, 1), 100.0 + z85 * 4.0)
    scale = np.full((1, H, 1), 4.0)
    strict = stage()
    strict.configure(np.array([0]), [rules(upper=100.0, breach_probability=0.9)])
    assert step(strict, 0, fc, scale=scale) == ([], [])
    loose = stage()
    loose.configure(np.array([0]), [rules(upper=100.0, breach_probability=0.8)])
    f, _ = step(loose, 0, fc, scale=scale)
    assert len(f) == 1 and f[0].probability == pytest.approx(0.85, abs=1e-5)
    assert f[0].eta_s == 2.0  # the first step already
    assert float(f[0].detail["probability"]) == pytest.approx(0.85, abs=1e-3)


def flat_at(p: float) -> np.ndarray:
    """A flat forecast beyond 100 with probability ``p`` at every step (scale 1)."""
    return np.full((1, H, 1), 100.0 + z_of(p))


def test_resolve_with_hysteresis_after_three_quiet_steps() -> None:
    s = stage()
    s.configure(np.array([0]), [rules(upper=100.0, breach_probability=0.9)])
    one = np.ones((1, H, 1))
    f, _ = step(s, 0, flat_at(0.95), scale=one)
    assert len(f) == 1
    # Between p/2 and p: still predicted, stays firing (no flapping at the threshold).
    for t in range(1, 20):
        assert step(s, t, flat_at(0.6), scale=one) == ([], [])
    assert s.probability[0] == pytest.approx(0.6, abs=1e-5)
    # Below p/2 twice, back up once: the count starts over.
    t = 20
    for p in (0.3, 0.3, 0.5, 0.3, 0.3):
        assert step(s, t, flat_at(p), scale=one) == ([], [])
        t += 1
    f, r = step(s, t, flat_at(0.3), scale=one)
    assert f == [] and len(r) == 1 and r[0].detail["reason"] == "not_predicted"
    assert r[0].probability == pytest.approx(0.3, abs=1e-5)
    assert s.firing_checks(np.array([0])) == []


def test_no_limits_nothing_computed() -> None:
    s = stage(n_rows=2)
    s.configure(np.array([0]), [rules()])  # row 1 never configured
    fc = np.full((2, H, 1), 1e9)
    assert step(s, 0, fc, x=fc[:, 0, :]) == ([], [])
    assert s.computed == 0 and not s.active.any()


def test_rows_not_warm_are_not_computed() -> None:
    s = stage()
    s.configure(np.array([0]), [rules(upper=1.0)])
    got = s.assess(np.array([0]), np.zeros(1, np.int64), np.full((1, H, 1), 5.0), None, np.ones((1, 1)), np.zeros(1, bool))
    assert got == ([], []) and s.computed == 0


def test_without_a_predicted_scale_the_spread_grows_with_sqrt_h() -> None:
    # 2 below the limit at every step, one-step spread 1: P_h = Phi(-2 / sqrt(h)).
    fc = np.full((1, H, 1), 98.0)
    p = 0.25  # Phi(-2 / sqrt(h)) >= 0.25 from h = 9 (sqrt(h) >= 2.97)
    fallback = stage()
    fallback.configure(np.array([0]), [rules(upper=100.0, breach_probability=p)])
    f, _ = step(fallback, 0, fc, spread1=1.0)
    assert len(f) == 1 and f[0].eta_s == 9 * 2.0
    assert f[0].probability == pytest.approx(float(normal_cdf(-2 / 3)), abs=1e-6)
    scaled = stage()  # the same with a constant predicted scale of 1: never that likely
    scaled.configure(np.array([0]), [rules(upper=100.0, breach_probability=p)])
    assert step(scaled, 0, fc, scale=np.ones((1, H, 1))) == ([], [])


def test_output_features_without_an_input_have_no_limits_and_the_earliest_crossing_wins() -> None:
    # Outputs: a (input 0), b (input 1), c (not an input).
    s = stage(n_out=3, out_in=[0, 1, -1])
    r = rules(["a", "b"], upper=100.0)
    s.configure(np.array([0]), [r])
    assert np.isnan(s.upper[0, 2]) and s.upper[0, 1] == 100.0
    fc = np.zeros((1, H, 3))
    fc[0, :, 0] = 90.0 + 2.0 * np.arange(1, H + 1)  # a crosses at h = 6
    fc[0, :, 1] = 96.0 + 2.0 * np.arange(1, H + 1)  # b crosses at h = 3
    fc[0, :, 2] = 1e6  # c has no limit
    f, _ = step(s, 0, fc, spread1=0.1)
    assert len(f) == 1 and f[0].feature == 1 and f[0].eta_s == 3 * 2.0
    assert s.eta(np.array([0]))[2].tolist() == [1]


def test_a_removed_limit_resolves_a_firing_breach() -> None:
    s = stage()
    s.configure(np.array([0]), [rules(upper=100.0)])
    assert len(step(s, 0, ramp_fc(95.0, 2.0))[0]) == 1
    s.configure(np.array([0]), [rules()])
    f, r = step(s, 1, ramp_fc(97.0, 2.0))
    assert f == [] and [b.detail["reason"] for b in r] == ["rules_changed"]
    assert step(s, 2, ramp_fc(99.0, 2.0)) == ([], [])


def test_many_rows_at_once_only_those_heading_for_a_limit_fire() -> None:
    n = 1000
    s = stage(n_rows=n)
    s.configure(np.arange(n), [rules(upper=100.0)] * n)
    slopes = np.where(np.arange(n) % 4 == 0, 5.0, 0.0)  # every 4th heads up; limit in 6 steps
    fc = (70.0 + slopes[:, None] * np.arange(1, H + 1)).reshape(n, H, 1)
    f, r = step(s, 0, fc, spread1=1.0)
    assert sorted(b.row for b in f) == list(range(0, n, 4)) and r == []
    assert {b.eta_s for b in f} == {7 * 2.0}  # 70 + 5 h beyond 100 with P >= 0.9 at h = 7
    eta, prob, feat = s.eta(np.arange(n))
    assert np.isnan(eta[1::4]).all() and (feat[1::4] == -1).all() and (prob[::4] >= 0.9).all()
    assert sorted(row for row, check in s.firing_checks(np.arange(n))) == list(range(0, n, 4))
    assert {check for _, check in s.firing_checks(np.arange(n))} == {CHECK}


def test_export_load_round_trip_keeps_the_episode() -> None:
    a = stage(n_rows=2)
    a.configure(np.arange(2), [rules(upper=100.0)] * 2)
    step(a, 0, np.concatenate([ramp_fc(90.0, 2.0), ramp_fc(50.0, 0.0)]))
    saved = a.export(np.arange(2))
    assert all(k.startswith("breach.") for k in saved) and "breach.upper" not in saved  # limits are configuration
    b = stage(n_rows=4)
    b.configure(np.array([3, 2]), [rules(upper=100.0)] * 2)
    b.load(np.array([3, 2]), saved)
    assert b.firing[[3, 2]].tolist() == [True, False]
    assert b.eta(np.array([3]))[0][0] == a.eta(np.array([0]))[0][0]
    assert [br.limit for br in b.breaches(np.arange(4))] == [100.0]
    # It carries on where it was: a quiet forecast resolves after three steps, not before.
    one = np.ones((1, H, 1))
    quiet = np.full((1, H, 1), 50.0)
    got = [step(b, t, quiet, scale=one, rows=np.array([3]))[1] for t in range(1, 4)]
    assert [len(g) for g in got] == [0, 0, 1]
    # Checkpoints written before the stage existed load as no episode.
    b.load(np.array([3]), {})
    assert not b.firing[3]


def test_drop_forgets_without_emitting_and_keeps_the_limits() -> None:
    s = stage()
    s.configure(np.array([0]), [rules(upper=100.0)])
    step(s, 0, ramp_fc(95.0, 2.0))
    s.drop(np.array([0]))
    assert s.firing_checks(np.array([0])) == [] and s.upper[0, 0] == 100.0
    assert len(step(s, 1, ramp_fc(95.0, 2.0))[0]) == 1  # still configured: fires again


def test_bad_configuration_is_a_clear_error() -> None:
    s = stage(n_out=2)
    with pytest.raises(ValueError, match="2 rules for 1 rows"):
        s.configure(np.array([0]), [rules(), rules()])
    with pytest.raises(ValueError, match="input features"):
        s.configure(np.array([0]), [rules(["a"])])
    with pytest.raises(ValueError, match="out_in"):
        BreachStage(2, np.array([0], np.int64), H, CADENCE_NS)
    with pytest.raises(ValueError, match="forecast has shape"):
        step(s, 0, np.zeros((1, H + 1, 2)))


def trend_run(trend_steps: int | None, n: int = 400, seed: int = 0) -> tuple[int | None, int, list[Breach]]:
    """A model stuck at the old baseline (flat forecast 20, scale 0.2) while the readings
    (noise 0.02) ramp by 0.03 a step from step 100 toward the upper limit 25 (a steady
    degradation: long beside the trend's memory). Returns the first firing step, the first
    step beyond the limit, and the resolutions."""
    s = stage(trend_steps=trend_steps)  # type: ignore[arg-type]
    s.configure(np.array([0]), [rules(upper=25.0)])
    rng = np.random.default_rng(seed)
    fired, crossing, resolved = None, -1, []
    for t in range(n):
        v = 20.0 + 0.03 * max(0, t - 100) + rng.normal(0, 0.02)
        if crossing < 0 and v > 25.0:
            crossing = t
        f, r = step(s, t, np.full((1, H, 1), 20.0), scale=np.full((1, H, 1), 0.2), x=np.array([[v]]))
        if f and fired is None:
            fired = t
            assert f[0].eta_s > 0 and f[0].expected > 25.0  # the trend's value at the ETA
        resolved += r
    return fired, crossing, resolved


def test_the_readings_trend_announces_a_ramp_the_models_forecast_misses() -> None:
    fired, crossing, resolved = trend_run(None)
    assert fired is not None and crossing - H <= fired < crossing
    assert resolved and resolved[0].detail["reason"] == "crossed"
    # Without the trend the stuck forecast never predicts it.
    assert trend_run(0)[0] is None


def test_the_trend_of_a_seasonal_noisy_stream_predicts_nothing() -> None:
    n_rows = 20
    s = stage(n_rows=n_rows)
    s.configure(np.arange(n_rows), [rules(lower=38.0, upper=62.0)] * n_rows)
    rng = np.random.default_rng(1)
    phase = rng.uniform(0, 2 * np.pi, n_rows)
    fc = np.full((n_rows, H, 1), 50.0)
    scale = np.full((n_rows, H, 1), 4.0)
    for t in range(3000):
        v = 50.0 + 5.0 * np.sin(2 * np.pi * t / 100 + phase) + rng.normal(0, 0.5, n_rows)
        f, _ = step(s, t, fc, scale=scale, x=v[:, None])
        assert f == [], (t, f)
    assert np.isfinite(s.slope_prev).all()  # the trend did count


def test_trend_state_is_saved_and_can_be_forgotten() -> None:
    s = stage()
    s.configure(np.array([0]), [rules(upper=100.0)])
    for t in range(60):
        step(s, t, np.full((1, H, 1), 50.0), x=np.array([[50.0 + 0.1 * t]]))
    saved = s.export(np.array([0]))
    assert {"breach.trend", "breach.trend_last", "breach.slope_prev", "breach.curvature"} <= set(saved)
    assert saved["breach.trend"][0, 0, 0] > 0
    s.forget_trend(np.array([0]))
    assert (s.trend[0] == 0).all() and np.isnan(s.trend_last[0]).all() and np.isnan(s.slope_prev[0]).all()
    with pytest.raises(ValueError, match="trend_steps"):
        BreachStage(1, np.array([0], np.int64), H, CADENCE_NS, trend_steps=-1)
