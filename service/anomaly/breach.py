"""Predicted breach: how likely each forecast step is beyond an operating limit.

The forecast of ``h`` steps ahead is taken as normal with mean ``fc[h]`` and standard
deviation ``spread[h]`` (the model's predicted scale; else the one-step spread grown like
a random walk, ``spread1 * sqrt(h)``). Beyond the upper limit ``u`` with probability
``Phi((fc - u) / spread)``, below the lower limit ``l`` with ``Phi((l - fc) / spread)``.
The stage compares ``fc -+ Phi^-1(p) * spread`` with the limits (``reaches``: no division
and no CDF on the hot path) and computes z values and probabilities only for the few rows
it reports.

Arrays are batch-major: ``fc`` and ``spread`` (B, H, Fo); limits (B, Fo), NaN: none; the
z values (B, H, Fo, 2), side 0 the upper limit, side 1 the lower one (NaN: no limit, no
spread).

>>> import numpy as np
>>> fc = np.array([[[8.0], [10.0], [12.0]]])  # one row, H=3, one feature
>>> z = limit_z(fc, horizon_spread(None, np.array([[1.0]]), 3), np.array([[np.nan]]), np.array([[10.0]]))
>>> [round(float(p), 3) for p in normal_cdf(z[0, :, 0, 0])]
[0.023, 0.5, 0.876]
>>> hit = reaches(fc, horizon_spread(None, np.array([[1.0]]), 3), np.array([[np.nan]]), np.array([[10.0]]),
...               np.array([z_of(0.8)]))
>>> hit, first = first_at_least(hit)
>>> bool(hit[0, 0, 0]), int(first[0, 0, 0])  # first reaches 0.8 at h = 3 (index 2)
(True, 2)
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from service.anomaly.scoring import erf
from service.arrays import F64

SIDES = ("upper", "lower")  # index of the last axis of limit_z
_SQRT2 = float(np.sqrt(2.0))
BoolArr = npt.NDArray[np.bool_]


def z_of(p: float) -> float:
    """``Phi^-1(p)``: a step is beyond a limit with probability >= p iff its z >= this."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a probability must be in (0, 1), found {p}")
    return NormalDist().inv_cdf(p)


def normal_cdf(z: npt.ArrayLike) -> F64:
    """``Phi(z)``, vectorised (|error| < 1e-7: erf's approximation)."""
    out: F64 = 0.5 * (1.0 + erf(np.asarray(z, np.float64) / _SQRT2))
    return out


def horizon_spread(scale: F64 | None, spread1: F64, horizon: int) -> F64:
    """(B, H, Fo) spread of each step ahead: ``scale`` itself, else ``spread1 * sqrt(h)``
    (errors of a model without a predicted scale add up over the steps like a random walk's)."""
    if scale is not None:
        return np.asarray(scale, np.float64)
    grow = np.sqrt(np.arange(1, horizon + 1, dtype=np.float64))
    out: F64 = np.asarray(spread1, np.float64)[:, None, :] * grow[None, :, None]
    return out


def limit_z(fc: F64, spread: F64, lower: F64, upper: F64) -> F64:
    """(B, H, Fo, 2) z of each step beyond the upper (side 0) and lower (side 1) limit.

    A spread that is negative or not finite gives NaN (nothing predicted); a zero spread
    gives +inf at or beyond the limit (certain, as ``reaches`` says) and -inf inside."""
    fc = np.asarray(fc, np.float64)
    sd = np.where(np.isfinite(spread) & (spread >= 0), spread, np.nan)[..., None]
    ahead = np.stack([fc - upper[:, None, :], lower[:, None, :] - fc], axis=-1)  # >= 0: at or beyond
    with np.errstate(divide="ignore", invalid="ignore"):
        out: F64 = np.where(sd == 0, np.where(ahead >= 0, np.inf, -np.inf), ahead / sd)
    return np.where(np.isnan(ahead), np.nan, out)


def reaches(fc: F64, spread: F64, lower: F64, upper: F64, z_min: F64) -> BoolArr:
    """(B, H, Fo, 2): is the step beyond the upper (side 0) / lower (side 1) limit with
    probability >= Phi(z_min) (B,)? ``limit_z >= z_min`` without dividing (``spread`` >= 0,
    NaN: unknown): the hot path computes this for every row with limits, ``limit_z`` only
    for the few it reports."""
    margin = spread * z_min[:, None, None]  # NaN (no spread, no limit) compares False below
    out = np.empty((*fc.shape, 2), bool)
    np.greater_equal(fc - margin, upper[:, None, :], out=out[..., 0])
    np.less_equal(fc + margin, lower[:, None, :], out=out[..., 1])
    return out


def first_at_least(hit: BoolArr) -> tuple[BoolArr, npt.NDArray[np.intp]]:
    """Per row, feature and side of ``reaches``: does any step reach it, and the first that
    does (index into the horizon; 0 where none does)."""
    first = np.asarray(np.argmax(hit, axis=1), np.intp)
    # The step argmax found is True iff any is (hit.any(axis=1) is ~20x slower on this layout).
    return np.take_along_axis(hit, first[:, None], axis=1)[:, 0], first


# -- the readings' own trend -------------------------------------------------------------
# A model trained on normal operation has never seen a degradation: its forecast of a
# reading running toward a limit reverts to the levels it knows (the demo model's does),
# and a model kept off an anomaly forecasts the old baseline. The readings' own trend is
# the second forecast: an exponentially weighted straight line through them (per row and
# feature), extrapolated over the horizon. Its spread: the readings' scatter around the
# line plus the uncertainty of the line (the weights' sandwich variance for white
# scatter, inflated by (1 + phi) / (1 - phi) for scatter that is AR(1) with lag-1
# correlation phi, estimated from first differences, whose lag-1 correlation is
# -(1 - phi) / 2 whatever the trend). A seasonal or wandering signal gets a wide, short
# reach; a steady ramp through low noise a narrow one.
TREND_SUMS = 14  # weighted sums (trend_update); the last reading and difference are kept beside them


def trend_update(sums: F64, last: F64, y: F64, lam: float) -> tuple[F64, F64]:
    """(``sums`` (B, Fo, 14), ``last`` (B, Fo, 2)) one step later, with this step's readings
    ``y`` (B, Fo) (NaN: none). Weights are ``lam ** age``: every earlier point ages by one
    step. Sums of w, w.age, w.age^2, w.y, w.age.y, w.y^2, w^2, w^2.age, w^2.age^2; of the
    differences d of consecutive readings: w, w.d, w.d^2; of consecutive differences'
    products: w, w.d.d_prev. ``last``: the last reading and difference (NaN: none)."""
    s0, s1, s2, sy, sty, syy, q0, q1, q2, wd, sd, sdd, wl, sl = np.moveaxis(sums, -1, 0)
    y_prev, d_prev = last[..., 0], last[..., 1]
    l2 = lam * lam
    ok = np.isfinite(y)
    yz = np.where(ok, y, 0.0)
    w = ok.astype(np.float64)
    d = y - y_prev  # NaN when this or the last reading is missing
    okd = np.isfinite(d)
    dz = np.where(okd, d, 0.0)
    okl = okd & np.isfinite(d_prev)
    out = np.stack([
        lam * s0 + w, lam * (s1 + s0), lam * (s2 + 2 * s1 + s0),
        lam * sy + yz, lam * (sty + sy), lam * syy + yz * yz,
        l2 * q0 + w, l2 * (q1 + q0), l2 * (q2 + 2 * q1 + q0),
        lam * wd + okd, lam * sd + dz, lam * sdd + dz * dz,
        lam * wl + okl, lam * sl + np.where(okl, dz * d_prev, 0.0),
    ], axis=-1)
    return out, np.stack([np.where(ok, y, y_prev), d], axis=-1)


def trend_slope(sums: F64, min_points: float) -> F64:
    """(B, Fo) the line's slope per step (NaN where it does not count yet, as in ``trend_forecast``)."""
    s0, s1, s2, sy, sty = (sums[..., k] for k in range(5))
    q0, wl = sums[..., 6], sums[..., 12]
    with np.errstate(divide="ignore", invalid="ignore"):
        n_eff = np.where(q0 > 0, s0 * s0 / q0, 0.0)
        det = s0 * s2 - s1 * s1
        ok = (n_eff >= max(min_points, 3.0)) & (det > 1e-9 * s0 * s2) & (wl > 2)
        slope = -(s0 * sty - s1 * sy) / np.where(ok, det, 1.0)
    return np.where(ok, slope, np.nan)


def trend_forecast(sums: F64, horizon: int, min_points: float, curvature: F64 | None = None) -> tuple[F64, F64]:
    """(mean, spread) (B, H, Fo) of the readings' line at the next ``horizon`` steps; NaN
    where there are fewer than ``min_points`` effective points (Kish) or no line fits.
    ``curvature`` (B, Fo): the mean squared change of the slope per step (a seasonal or
    wandering signal's slope turns, a degradation's holds); a line is off by about
    ``turn * h^2 / 2`` after ``h`` steps, which adds ``curvature * h^4 / 4`` to the
    variance. Readings are centred on their weighted mean first: raw levels (1013 hPa)
    would cost the sums their precision."""
    s0, s1, s2, sy, sty, syy, q0, q1, q2, wd, sd, sdd, wl, sl = np.moveaxis(sums, -1, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        n_eff = np.where(q0 > 0, s0 * s0 / q0, 0.0)
        s0_ = np.where(s0 > 0, s0, 1.0)
        det = s0 * s2 - s1 * s1
        ok = (n_eff >= max(min_points, 3.0)) & (det > 1e-9 * s0 * s2) & (wl > 2)
        det = np.where(ok, det, 1.0)
        mean_y = sy / s0_
        sty_c = sty - s1 * mean_y  # centred: sums of w.age.(y - mean), w.(y - mean)^2
        syy_c = np.maximum(syy - sy * mean_y, 0.0)
        c = s0 * sty_c / det  # slope per step of age (older = larger age)
        a_c = -s1 * sty_c / det  # the line now (age 0), centred
        sse = syy_c - 2 * c * sty_c + a_c * a_c * s0 + 2 * a_c * c * s1 + c * c * s2
        sigma2 = np.maximum(sse, 0.0) / s0_ * n_eff / np.maximum(n_eff - 2.0, 1.0)
        md = sd / np.where(wd > 0, wd, 1.0)
        var_d = sdd / np.where(wd > 0, wd, 1.0) - md * md
        rho_d = (sl / np.where(wl > 0, wl, 1.0) - md * md) / np.where(var_d > 0, var_d, np.inf)
        phi = np.clip(1.0 + 2.0 * rho_d, 0.0, 0.98)
    # var(h) = sigma2 + the line's variance (a quadratic in h: the sandwich x0' A^-1 B A^-1 x0
    # with x0 = (1, -h), expanded) + the turning slope's curvature * h^4 / 4; its
    # coefficients per row, then one pass over the horizon.
    scale = sigma2 * (1.0 + phi) / (1.0 - phi) / (det * det)
    k0 = s2 * s2 * q0 - 2 * s1 * s2 * q1 + s1 * s1 * q2
    k1 = 2 * (s1 * s2 * q0 - (s0 * s2 + s1 * s1) * q1 + s0 * s1 * q2)
    k2 = s1 * s1 * q0 - 2 * s0 * s1 * q1 + s0 * s0 * q2
    b0 = np.where(ok, sigma2 + scale * k0, np.nan)[:, None]  # NaN: the line does not count (yet)
    b1, b2 = (scale * k1)[:, None], (scale * k2)[:, None]
    b4 = 0.0 if curvature is None else np.nan_to_num(curvature, nan=0.0)[:, None] / 4
    h = np.arange(1, horizon + 1, dtype=np.float64)[None, :, None]  # steps ahead: age -h
    mean: F64 = np.where(ok, mean_y + a_c, np.nan)[:, None] - c[:, None] * h
    with np.errstate(invalid="ignore"):  # rounding below 0: NaN, no prediction
        spread: F64 = np.sqrt(b0 + h * (b1 + h * (b2 + h * h * b4)))
    return mean, spread
