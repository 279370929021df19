"""The PCA baseline and the rates on synthetic data."""

from __future__ import annotations

import numpy as np

from evaluation.tep import metrics, pca


def correlated(rng: np.random.Generator, n: int) -> np.ndarray:
    latent = rng.normal(size=(n, 3))
    mix = np.random.default_rng(1).normal(size=(3, 10))
    return 5.0 + latent @ mix + 0.1 * rng.normal(size=(n, 10))


def test_shifted_test_set_is_flagged_more_than_a_normal_one() -> None:
    rng = np.random.default_rng(0)
    model = pca.fit(correlated(rng, 500), components=3)
    normal = correlated(rng, 400)
    shifted = correlated(rng, 400)
    shifted[:, 0] += 1.0  # ~3 std of that feature, off the correlation structure: residual space (Q)
    drifted = correlated(rng, 400) + 4.0 * np.random.default_rng(1).normal(size=(3, 10))[0]  # along a component (T^2)
    for stat, faulty in (("q", shifted), ("t2", drifted)):
        thr = metrics.threshold_at(getattr(model, stat)(normal), 0.05)
        far = metrics.rate(metrics.flagged(getattr(model, stat)(normal), thr))
        fdr = metrics.rate(metrics.flagged(getattr(model, stat)(faulty), thr))
        assert far <= 0.05
        assert fdr > 0.9, (stat, fdr)


def test_q_is_zero_inside_the_subspace_and_t2_is_one_per_component_on_average() -> None:
    rng = np.random.default_rng(2)
    x = correlated(rng, 2000)
    model = pca.fit(x, components=3)
    assert abs(float(np.mean(model.t2(x))) - 3.0) < 0.01  # sum of k unit-variance scores (ddof 1 ~ N-1)
    inside = model.mean + model.std * (np.ones((1, 3)) @ model.loadings.T)
    assert float(model.q(inside)[0]) < 1e-20


def test_threshold_at_gives_at_most_the_rate_and_ignores_nan() -> None:
    normal = np.concatenate([np.arange(100, dtype=np.float64), [np.nan] * 5])
    thr = metrics.threshold_at(normal, 0.05)
    assert metrics.rate(metrics.flagged(normal[:100], thr)) == 0.05
    assert thr == 94.0
    assert not metrics.flagged(np.array([np.nan]), -1e9)[0]  # unscored is never flagged


def test_a_saturated_score_flags_nothing_and_says_so() -> None:
    normal = np.concatenate([np.linspace(0, 0.9, 90), np.ones(10), [np.nan]])  # 10 % at the cap
    assert metrics.top_share(normal) == 0.1
    thr = metrics.threshold_at(normal, 0.05)
    assert thr == 1.0 and not metrics.flagged(np.ones(5), thr).any()


def test_roc_auc_against_pairs() -> None:
    rng = np.random.default_rng(3)
    pos = np.round(rng.normal(1, 1, 60), 1)
    neg = np.round(rng.normal(0, 1, 80), 1)
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert abs(metrics.roc_auc(pos, neg) - pairs) < 1e-12
    assert metrics.roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
