"""Online NAB detectors: each maps one series to anomaly scores in [0, 1], row by row,
every score using only the rows up to and including its own.

- ``windowed_gaussian``: NAB's baseline (a Gaussian over a sliding window of values);
  used to cross-check our scorer against the published 39.6.
- ``ResidualDetector``: sensorcast's detector. A one-step forecast, the residual in units
  of an online robust spread (anomalous residuals do not widen the spread), then the
  anomaly likelihood of ``evaluation.nab.likelihood``. The forecasts come from a
  ``Forecaster``: a numpy twin here, or the service's ONNX step models (``evaluation.nab.live``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from evaluation.nab.likelihood import AnomalyLikelihood, LikelihoodConfig, normal_tail

Detector = Callable[[np.ndarray], np.ndarray]


def windowed_gaussian(values: np.ndarray, window: int = 6400, step: int = 100) -> np.ndarray:
    """NAB's Windowed Gaussian: tail probability of each value under a Gaussian fitted to
    the previous values (the first ``window`` of them, then a window sliding by ``step``)."""
    n = len(values)
    scores = np.zeros(n)
    data: list[float] = []
    pending: list[float] = []
    mean, std = 0.0, 1.0
    for i in range(n):
        x = float(values[i])
        if data:
            z = abs(x - mean) / std
            scores[i] = 1.0 - 2.0 * normal_tail(z) if z > 0 else 0.0
        if len(data) < window:
            data.append(x)
            refit = True
        else:
            pending.append(x)
            refit = len(pending) == step
            if refit:
                data = data[step:] + pending
                pending = []
        if refit:
            arr = np.asarray(data)
            mean = float(arr.mean())
            std = float(arr.std()) or 1e-6  # NAB's floor for a flat window
    return np.clip(scores, 0.0, 1.0)


class Forecaster:
    """One-step-ahead forecaster over a whole series (online: forecast[t] uses x[..t])."""

    def forecasts(self, values: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class RepeatLast(Forecaster):
    """Naive persistence: the next value equals the current one."""

    def forecasts(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64).copy()


@dataclass(frozen=True, slots=True)
class ResidualConfig:
    spread_alpha: float = 0.01  # EW mean of |residual|: ~100-step memory
    clip: float = 4.0  # residuals beyond clip * spread update the spread as if they were clip * spread
    warmup: int = 20  # steps before residual scores count (spread still meaningless)
    squash: float = 3.0  # raw = r / (r + squash): bounded, so one huge residual cannot wreck the fit
    spatial_tolerance: float | None = 0.05  # value beyond seen range by this fraction of it: score 1
    likelihood: LikelihoodConfig = field(default_factory=LikelihoodConfig)
    log_cap: float = 12.0  # -log10(tail) at which the score saturates


@dataclass(slots=True)
class ResidualDetector:
    """Forecast residual -> robust spread units -> bounded raw score -> anomaly likelihood."""

    forecaster: Forecaster = field(default_factory=RepeatLast)
    config: ResidualConfig = field(default_factory=ResidualConfig)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        fc = self.forecaster.forecasts(values)  # fc[t]: forecast of values[t + 1]
        return self.score(values, fc)

    def score(self, values: np.ndarray, fc: np.ndarray) -> np.ndarray:
        cfg = self.config
        n = len(values)
        out = np.zeros(n)
        raw_out = np.zeros(n)
        lk = AnomalyLikelihood(cfg.likelihood)
        spread = 0.0
        lo = hi = float(values[0]) if n else 0.0
        for t in range(1, n):
            x = float(values[t])
            e = abs(x - float(fc[t - 1]))
            if t == 1:
                spread = e
            s = max(spread, 1e-9 * (abs(x) + 1.0), 1e-12)
            r = e / s
            raw = r / (r + cfg.squash) if t > cfg.warmup else 0.0
            raw_out[t] = raw
            lk.update(raw)
            score = lk.log_score(cfg.log_cap) if lk.tail < 0.5 else 0.0
            if cfg.spatial_tolerance is not None and t > cfg.likelihood.learning_steps:
                tol = cfg.spatial_tolerance * (hi - lo)
                if x > hi + tol or x < lo - tol:
                    score = 1.0
            out[t] = score
            spread += cfg.spread_alpha * (min(e, cfg.clip * s) - spread)
            lo, hi = min(lo, x), max(hi, x)
        return out
