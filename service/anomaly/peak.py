"""Peak ratio: is the recent surprise larger than anything this stream has shown lately?

A raw anomaly score (a residual in spread units) is averaged over a short window and
compared with the *peak* of the same average over the stream's past, a peak that decays
slowly so one old incident does not mask everything after it. The output
``ratio / (1 + ratio)`` is 0.5 when the recent surprise equals the past peak and tends to
1 as it exceeds it; noisy streams have high peaks, quiet ones low, so one threshold works
across streams of any scale or noise level. Once an event has raised the peak, its own
aftermath scores lower: repeated alerts for one incident are damped by construction.

On NAB this post-processing did better than a Gaussian anomaly likelihood
(``evaluation.nab.likelihood``): see docs/nab.md for the measured comparison.

Vectorised over stream rows like ``service.anomaly.scoring.SpreadScorer``: per-row state
lives in arrays, ``update(rows, raw)`` advances the given rows by one step (each row at
most once per call).

>>> import numpy as np
>>> p = PeakRatio(window=2, learning_steps=3)
>>> p.grow(1)
>>> r = np.array([0])
>>> [round(float(p.update(r, np.array([v]))[0]), 3) for v in (1.0, 1.0, 1.0, 1.0, 4.0)]
[0.0, 0.0, 0.0, 0.5, 0.714]
"""

from __future__ import annotations

import numpy as np

from service.arrays import F64, Col, IntArr, RowArrays


class PeakRatio(RowArrays):
    """Per-row short-window mean of raw scores vs its slowly decaying past peak."""

    ring = Col(np.float64, ("window",), 0.0)  # (N, W) the last raw scores
    total = Col(np.float64, fill=0.0)  # their sum
    peak = Col(np.float64, fill=0.0)  # the decaying peak of the window mean
    count = Col(np.int64, fill=0)

    def __init__(self, window: int = 20, decay: float = 0.9999, learning_steps: int = 300) -> None:
        # window 20: a run of moderate surprise outranks a single noisy step.
        # decay 0.9999 per step: an old peak halves after ~7,000 steps (24 days at 5 min).
        # learning_steps 300: the peak must have seen a day or so of normal behaviour.
        if window < 1 or not 0.0 < decay <= 1.0 or learning_steps < 0:
            raise ValueError(
                f"window >= 1, 0 < decay <= 1, learning_steps >= 0 expected, found {window}, {decay}, {learning_steps}"
            )
        self.window = window
        self.decay = decay
        self.learning_steps = learning_steps
        super().__init__({"window": window})

    def update(self, rows: IntArr, raw: F64) -> F64:
        """Advance ``rows`` by one raw score each (NaN counts as 0); scores (B,) in [0, 1)."""
        raw = np.nan_to_num(np.asarray(raw, np.float64), nan=0.0, posinf=0.0)
        raw = np.maximum(raw, 0.0)
        slot = self.count[rows] % self.window
        self.total[rows] += raw - self.ring[rows, slot]
        self.ring[rows, slot] = raw
        filled = np.minimum(self.count[rows] + 1, self.window)
        avg = np.maximum(self.total[rows], 0.0) / filled  # (B,), clamp float drift below 0
        past = self.peak[rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(past > 0, avg / past, np.where(avg > 0, np.inf, 0.0))
            score = np.where(np.isinf(ratio), 1.0, ratio / (1.0 + ratio))
        score[self.count[rows] < self.learning_steps] = 0.0
        self.peak[rows] = np.maximum(past * self.decay, avg)
        self.count[rows] += 1
        out: F64 = score
        return out
