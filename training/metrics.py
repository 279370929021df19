"""Accuracy: normalised MSE / MAE per horizon step, and the naive baselines beside them.

Errors are measured on values z-scored with the train statistics (the ETT protocol), so
features in different units weigh the same and numbers compare across datasets.
Missing targets are left out of every average.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data import F32


@dataclass(frozen=True, slots=True)
class Score:
    mse: float
    mae: float
    mse_by_step: tuple[float, ...]
    mae_by_step: tuple[float, ...]
    count: int

    def as_dict(self) -> dict[str, float]:
        return {"mse": self.mse, "mae": self.mae, "count": float(self.count)}


def score(forecast: F32, actual: F32, mean: F32, std: F32) -> Score:
    """forecast, actual (P, H, F) raw; mean, std (F,) -> errors in train-std units."""
    err = (forecast - actual) / std  # (P, H, F); the mean cancels
    ok = ~np.isnan(err)
    if not ok.any():
        raise ValueError("no observed targets to score against")
    e2 = np.where(ok, err * err, 0.0)
    e1 = np.where(ok, np.abs(err), 0.0)
    n_h = ok.sum(axis=(0, 2)).clip(min=1)
    return Score(
        mse=float(e2.sum() / ok.sum()),
        mae=float(e1.sum() / ok.sum()),
        mse_by_step=tuple(float(x) for x in e2.sum(axis=(0, 2)) / n_h),
        mae_by_step=tuple(float(x) for x in e1.sum(axis=(0, 2)) / n_h),
        count=int(ok.sum()),
    )


def ffill(values: F32) -> F32:
    """Carry the last observed value forward (what a baseline knows at each row)."""
    out = values.copy()
    for t in range(1, len(out)):
        m = np.isnan(out[t])
        out[t, m] = out[t - 1, m]
    return out


def repeat_last(values: F32, positions: np.ndarray, horizon: int) -> F32:
    """(P, H, F): the last observed value at each position, repeated."""
    last = ffill(values)[positions]  # (P, F)
    return np.repeat(last[:, None, :], horizon, axis=1)


def seasonal_naive(values: F32, positions: np.ndarray, horizon: int, season: int) -> F32:
    """(P, H, F): the value one season before each target step (NaN when not yet seen)."""
    filled = ffill(values)
    h = np.arange(horizon)
    # Target row p+1+h reads row p+1+h - season*k with k the smallest making it <= p.
    k = (h // season) + 1
    src = positions[:, None] + 1 + h[None] - season * k[None]  # (P, H)
    out = np.full((len(positions), horizon, values.shape[1]), np.nan, dtype=np.float32)
    ok = src >= 0
    out[ok] = filled[src[ok]]
    return out


def season_steps(cadence_s: float, horizon: int) -> int:
    """A day in steps when that is a sensible season for this cadence, else the horizon."""
    day = round(86_400 / cadence_s)
    return day if 2 <= day <= 10_000 else max(horizon, 2)
