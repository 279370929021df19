"""Anomaly score: how surprising is the value, given the forecast made one step earlier.

``z = |actual - expected| / spread`` per output feature, where ``spread`` is the model's
predicted scale when it has one, else a robust online spread of the stream's own past
residuals (EWMA of ``|residual|``, scaled by sqrt(pi/2) so that it estimates the standard
deviation of a normal residual). The score is ``2 Phi(z) - 1 = erf(z / sqrt 2)`` in
[0, 1): 0.99 means "a 1-in-100 residual". A stream with several output features takes
the largest feature score (the feature is reported with the alert).

Anomalous points never update the baseline: ``learn`` is told which rows to learn from,
and the engine passes only rows that scored below the threshold. Until a stream has
``min_residuals`` residuals (and no predicted scale) its score is NaN: neutral, no alert.

Vectorised over a batch of stream rows (river's ``score_one``/``learn_one`` for many rows
at once): per-row state lives in arrays indexed by the stream's row in its model's table.

>>> import numpy as np
>>> s = SpreadScorer(n_features=1, min_residuals=0)
>>> s.grow(2)
>>> rows = np.array([0, 1])
>>> score, spread = s.score(rows, np.array([[1.0], [5.0]]), np.array([[1.0], [1.0]]), np.array([[1.0], [1.0]]))
>>> [round(float(v), 4) for v in score]
[0.0, 0.9999]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from service.arrays import F64, Col, IntArr, RowArrays

SQRT_HALF_PI = float(np.sqrt(np.pi / 2))  # E|r| = sigma * sqrt(2/pi) for a normal residual
_SQRT2 = float(np.sqrt(2.0))


def erf(x: npt.ArrayLike) -> F64:
    """Vectorised erf (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7); numpy has none."""
    a = np.asarray(x, np.float64)
    sign = np.sign(a)
    # erf(10) == 1 to double precision; clipping keeps a*a from overflowing on huge z.
    a = np.minimum(np.abs(a), 10.0)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    out: F64 = sign * (1.0 - poly * np.exp(-a * a))
    return out


def score_from_z(z: npt.ArrayLike) -> F64:
    """Two-sided normal tail: ``2 Phi(|z|) - 1``."""
    return erf(np.abs(np.asarray(z, np.float64)) / _SQRT2)


def z_for_score(score: float) -> float:
    """Inverse of ``score_from_z`` (bisection; called once per threshold, not per step)."""
    if not 0.0 < score < 1.0:
        raise ValueError(f"score must be in (0, 1), found {score}")
    lo, hi = 0.0, 40.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if float(score_from_z(mid)) < score:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


class SpreadScorer(RowArrays):
    """Per-row residual spread (EWMA of |residual|) and the [0, 1] score."""

    abs_ewma = Col(np.float64, ("n",), 0.0)  # (N, Fo)
    count = Col(np.int64, fill=0)  # residuals learnt

    def __init__(self, n_features: int, alpha: float = 0.05, min_residuals: int = 10) -> None:
        # alpha 0.05: the spread follows about the last 20 normal steps.
        self.n_features = n_features
        self.alpha = alpha
        self.min_residuals = min_residuals
        super().__init__({"n": n_features})

    def spread(self, rows: IntArr, scale: F64 | None) -> F64:
        """(B, Fo) spread in raw units: the model's scale, else the learnt residual spread."""
        if scale is not None:
            return np.asarray(scale, np.float64)
        learnt = self.abs_ewma[rows] * SQRT_HALF_PI
        learnt[self.count[rows] < self.min_residuals] = np.nan
        return learnt

    def score(self, rows: IntArr, actual: F64, expected: F64, scale: F64 | None) -> tuple[F64, F64]:
        """Scores (B,) in [0, 1] (NaN: no opinion) and the spread (B, Fo) used."""
        spread = self.spread(rows, scale)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.abs(np.asarray(actual, np.float64) - expected) / spread  # (B, Fo)
        z[~np.isfinite(z)] = np.nan
        per_feature = score_from_z(z)  # NaN stays NaN
        if per_feature.shape[1] == 1:
            return per_feature[:, 0], spread
        with np.errstate(invalid="ignore"):
            all_nan = np.isnan(per_feature).all(axis=1)
            filled = np.where(np.isnan(per_feature), -1.0, per_feature)
            best = filled.max(axis=1)
        best[all_nan] = np.nan
        return best, spread

    def learn(self, rows: IntArr, actual: F64, expected: F64) -> None:
        """Fold these rows' residuals into their baseline (caller excludes anomalies)."""
        if rows.size == 0:
            return
        resid = np.abs(np.asarray(actual, np.float64) - expected)  # (B, Fo)
        ok = np.isfinite(resid)
        cur = self.abs_ewma[rows]
        # A plain mean over the first 1/alpha residuals, then the EWMA: no slow start from 0.
        rate = np.maximum(self.alpha, 1.0 / (self.count[rows] + 1.0))[:, None]
        upd = cur + rate * (resid - cur)
        self.abs_ewma[rows] = np.where(ok, upd, cur)
        self.count[rows] += ok.any(axis=1)
