"""The online post-processors in service/anomaly: PeakRatio, RangeNovelty, AnomalyLikelihood."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.nab.likelihood import AnomalyLikelihood, LikelihoodConfig
from service.anomaly.novelty import RangeNovelty
from service.anomaly.peak import PeakRatio

ROW0 = np.array([0])


def feed(p: PeakRatio, values: list[float]) -> list[float]:
    return [float(p.update(ROW0, np.array([v]))[0]) for v in values]


def test_peak_ratio_is_neutral_while_learning_then_half_at_the_past_peak() -> None:
    p = PeakRatio(window=1, decay=1.0, learning_steps=3)
    p.grow(1)
    out = feed(p, [1.0, 2.0, 1.0, 2.0, 4.0, 2.0])
    assert out[:3] == [0.0, 0.0, 0.0]
    assert out[3] == pytest.approx(0.5)  # equals the past peak 2.0
    assert out[4] == pytest.approx(2 / 3)  # twice the peak: 2 / (1 + 2)
    assert out[5] == pytest.approx(1 / 3)  # half the new peak 4.0


def test_peak_ratio_averages_over_its_window() -> None:
    p = PeakRatio(window=4, decay=1.0, learning_steps=0)
    p.grow(1)
    out = feed(p, [1.0, 1.0, 1.0, 1.0, 5.0])
    # The 4-step mean goes 1 -> (1 + 1 + 1 + 5) / 4 = 2: ratio 2 against the peak 1.
    assert out[4] == pytest.approx(2 / 3)


def test_peak_decay_lets_an_old_incident_fade() -> None:
    fast = PeakRatio(window=1, decay=0.9, learning_steps=0)
    never = PeakRatio(window=1, decay=1.0, learning_steps=0)
    for p in (fast, never):
        p.grow(1)
    history = [10.0] + [1.0] * 50
    a, b = feed(fast, [*history, 2.0]), feed(never, [*history, 2.0])
    assert a[-1] > 0.6 > 0.2 > b[-1]


def test_peak_rows_are_independent_and_reset() -> None:
    p = PeakRatio(window=1, decay=1.0, learning_steps=0)
    p.grow(2)
    rows = np.array([0, 1])
    p.update(rows, np.array([1.0, 100.0]))
    s = p.update(rows, np.array([3.0, 3.0]))
    assert s[0] == pytest.approx(0.75) and s[1] == pytest.approx(3 / 103)
    p.reset(np.array([1]))
    assert p.update(np.array([1]), np.array([1.0]))[0] == pytest.approx(1.0)  # no past peak yet


def test_peak_treats_nan_as_no_evidence() -> None:
    p = PeakRatio(window=1, decay=1.0, learning_steps=0)
    p.grow(1)
    out = feed(p, [2.0, float("nan"), 2.0])
    assert out[1] == 0.0 and out[2] == pytest.approx(0.5)


def test_range_novelty_scores_only_real_excursions_and_grades_them() -> None:
    n = RangeNovelty(tolerance=0.1, learning_steps=2, floor=0.9, knee=0.1)
    n.grow(1)
    out = [float(n.update(ROW0, np.array([v]))[0]) for v in (0.0, 10.0, 10.5, 5.0, 12.0, 30.0)]
    assert out[:4] == [0.0, 0.0, 0.0, 0.0]  # 10.5 is within 10% of the range [0, 10]
    small, large = out[4], out[5]
    assert small == pytest.approx(0.9 + 0.1 * (1.5 / 10.5) / (1.5 / 10.5 + 0.1))
    assert 0.9 < small < large < 1.0


def test_range_novelty_ignores_missing_values() -> None:
    n = RangeNovelty(tolerance=0.0, learning_steps=0)
    n.grow(1)
    for v in (0.0, 1.0):
        n.update(ROW0, np.array([v]))
    assert n.update(ROW0, np.array([np.nan]))[0] == 0.0
    assert n.update(ROW0, np.array([0.5]))[0] == 0.0
    assert n.update(ROW0, np.array([-1.0]))[0] > 0.9


def test_likelihood_neutral_while_learning_and_high_for_a_burst() -> None:
    lk = AnomalyLikelihood(LikelihoodConfig(short_window=5, learning_steps=100, reestimate_every=10))
    rng = np.random.default_rng(0)
    quiet = [lk.update(float(v)) for v in rng.uniform(0.0, 0.2, 400)]
    assert quiet[:100] == [0.5] * 100
    assert max(quiet[150:]) < 0.9999
    burst = [lk.update(1.0) for _ in range(5)]
    assert burst[-1] > 0.999999
    assert lk.log_score() > 0.5


def test_likelihood_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="short_window"):
        LikelihoodConfig(short_window=0)
    with pytest.raises(ValueError, match="decay"):
        PeakRatio(decay=1.5)
    with pytest.raises(ValueError, match="tolerance"):
        RangeNovelty(tolerance=-1.0)


def test_rising_edge_keeps_onsets_and_damps_aftermath() -> None:
    from service.anomaly.edge import RisingEdge

    e = RisingEdge(window=3, damp=0.5)
    e.grow(2)
    rows = np.array([0, 1])
    a = [0.2, 0.9, 0.8, 0.95, 0.1, 0.1, 0.1, 0.7]
    b = [0.5] * 8
    out = np.array([e.update(rows, np.array([x, y])) for x, y in zip(a, b, strict=True)])
    np.testing.assert_allclose(out[:, 0], [0.2, 0.9, 0.4, 0.95, 0.05, 0.05, 0.05, 0.7])
    # A flat stream: only its first score is an onset; rows do not see each other.
    np.testing.assert_allclose(out[:, 1], [0.5] + [0.25] * 7)
    e.reset(np.array([1]))
    assert e.update(np.array([1]), np.array([0.5]))[0] == 0.5
    assert np.isnan(e.update(np.array([0]), np.array([np.nan]))[0])
