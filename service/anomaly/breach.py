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
