"""Surprise score: a residual turned into a score one threshold can serve for every stream.

The composite the NAB benchmark measured (docs/nab.md), for univariate streams,
vectorised over stream rows like ``SpreadScorer`` (``grow``/``reset``/``update``):

1. the residual ``|actual - expected|`` in units of the stream's robust spread
   (``SpreadScorer``: EWMA of |residual|, surprising residuals kept out), squashed to
   ``z / (squash + z)``;
2. ``PeakRatio``: its short-window mean against the slowly decaying peak of its past;
3. ``RangeNovelty``: a value beyond the stream's seen range outranks any residual score;
4. ``RisingEdge``: a score that is not a recent maximum is damped.

Until a stream has learnt its spread and seen ``learning_steps`` steps the score is 0.
For the engine: call ``update(rows, actual, expected)`` once per step instead of (or
after) ``SpreadScorer.score``; it learns the spread itself.

>>> import numpy as np
>>> s = SurpriseScorer(SurpriseConfig(learning_steps=20, min_residuals=5))
>>> s.grow(1)
>>> rng = np.random.default_rng(0)
>>> x = 10 + rng.normal(0, 1, 200)
>>> x[150] += 12
>>> out = [float(s.update(np.array([0]), x[t : t + 1], x[t - 1 : t])[0]) for t in range(1, 200)]
>>> int(np.argmax(out)) + 1, round(max(out), 2) > 0.9
(150, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.anomaly.edge import RisingEdge
from service.anomaly.novelty import RangeNovelty
from service.anomaly.peak import PeakRatio
from service.anomaly.scoring import SpreadScorer, z_for_score
from service.arrays import F64, IntArr


@dataclass(frozen=True, slots=True)
class SurpriseConfig:
    """Defaults were chosen on NAB (and confirmed by two-fold cross-validation over its files)."""

    spread_alpha: float = 0.003  # ~300-step memory of |residual| (0.05 scored ~7 NAB points lower)
    min_residuals: int = 20  # score 0 until the spread has seen this many residuals
    learn_below: float = 0.999  # residuals scoring >= this (two-sided normal tail) stay out of the spread
    squash: float = 1.0  # raw = z / (squash + z): bounded, so one huge residual cannot dominate
    peak_window: int = 20  # steps averaged before comparing with the past peak
    peak_decay: float = 0.9999  # per step: an old peak halves after ~7,000 steps
    learning_steps: int = 200  # no peak or range verdicts before this many steps
    range_tolerance: float = 0.01  # excursions beyond 1% of the seen range count as novel
    range_floor: float = 0.9  # range novelty outranks every residual-based score
    use_peak: bool = True  # False: the squashed residual itself (an ablation)
    edge_window: int = 50  # rising edge: damp scores not above the last 50 (0: off)
    edge_damp: float = 0.5


class SurpriseScorer:
    """Per-row state of the four stages; ``update`` advances the given rows by one step."""

    def __init__(self, config: SurpriseConfig | None = None) -> None:
        cfg = self.config = config or SurpriseConfig()
        self.spread = SpreadScorer(n_features=1, alpha=cfg.spread_alpha, min_residuals=cfg.min_residuals)
        self.peak = PeakRatio(cfg.peak_window, cfg.peak_decay, cfg.learning_steps)
        self.novelty = RangeNovelty(cfg.range_tolerance, cfg.learning_steps, cfg.range_floor)
        self.edge = RisingEdge(max(cfg.edge_window, 1), cfg.edge_damp)
        self._learn_z = z_for_score(cfg.learn_below)

    def grow(self, capacity: int) -> None:
        for part in (self.spread, self.peak, self.novelty, self.edge):
            part.grow(capacity)

    def reset(self, rows: IntArr) -> None:
        for part in (self.spread, self.peak, self.novelty, self.edge):
            part.reset(rows)

    def update(self, rows: IntArr, actual: F64, expected: F64, scale: F64 | None = None) -> F64:
        """rows (B,), actual (B,), expected (B,) (NaN: no forecast yet) -> scores (B,) in [0, 1].

        ``scale`` (B,): a model's predicted spread for this step, used instead of the
        learnt residual spread where finite and positive.
        """
        cfg = self.config
        actual = np.asarray(actual, np.float64)
        expected = np.asarray(expected, np.float64)
        s = self.spread.spread(rows, None)[:, 0]  # (B,) residual sigma, NaN until learnt
        if scale is not None:
            sc = np.asarray(scale, np.float64)
            s = np.where(np.isfinite(sc) & (sc > 0), sc, s)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            z = np.abs(actual - expected) / s
        z = np.where(np.isfinite(z), z, 0.0)
        raw = z / (cfg.squash + z)
        p = self.peak.update(rows, raw) if cfg.use_peak else raw
        nov = self.novelty.update(rows, actual)
        learn = np.isfinite(expected) & np.isfinite(actual) & (z < self._learn_z)
        if learn.any():
            self.spread.learn(rows[learn], actual[learn, None], expected[learn, None])
        out: F64 = np.where(nov > 0, nov, cfg.range_floor * p)
        if cfg.edge_window > 0:
            out = self.edge.update(rows, out)
        return out
