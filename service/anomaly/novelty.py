"""Range novelty: a value outside everything the stream has shown before.

Many real incidents (a sensor railing, a service going dark) first show as a value beyond
the stream's historical range, before any forecast residual looks odd: NAB's HTM detector
carries the same rule ("spatial anomaly"). The score is 0 inside the range widened by
``tolerance`` times its width, and rises from ``floor`` towards 1 with the excursion
measured in range widths, so large excursions outrank small ones.

Vectorised over stream rows (``grow``/``reset``/``update``), like the other scorers.

>>> import numpy as np
>>> n = RangeNovelty(tolerance=0.1, learning_steps=2)
>>> n.grow(1)
>>> r = np.array([0])
>>> [round(float(n.update(r, np.array([v]))[0]), 3) for v in (0.0, 10.0, 5.0, 10.5, 12.0)]
[0.0, 0.0, 0.0, 0.0, 0.959]
"""

from __future__ import annotations

import numpy as np

from service.arrays import F64, Col, IntArr, RowArrays


class RangeNovelty(RowArrays):
    """Per-row running min/max; scores excursions beyond them."""

    lo = Col(np.float64, fill=np.inf)
    hi = Col(np.float64, fill=-np.inf)
    count = Col(np.int64, fill=0)

    def __init__(
        self, tolerance: float = 0.02, learning_steps: int = 300, floor: float = 0.9, knee: float = 0.1
    ) -> None:
        # tolerance 0.02: 2% of the seen range; smaller fires on ordinary new highs.
        # floor 0.9: any real excursion outranks residual-based scores below 0.9.
        # knee 0.1: an excursion of 0.1 range widths scores halfway from floor to 1.
        if tolerance < 0 or learning_steps < 0 or not 0.0 <= floor < 1.0 or knee <= 0:
            raise ValueError(
                f"tolerance >= 0, learning_steps >= 0, 0 <= floor < 1, knee > 0 expected, found "
                f"{tolerance}, {learning_steps}, {floor}, {knee}"
            )
        self.tolerance = tolerance
        self.learning_steps = learning_steps
        self.floor = floor
        self.knee = knee
        super().__init__()

    def update(self, rows: IntArr, value: F64) -> F64:
        """Score (B,) in [0, 1) of each row's new value, then widen the range. NaN: 0, ignored."""
        v = np.asarray(value, np.float64)
        ok = np.isfinite(v)
        lo, hi = self.lo[rows], self.hi[rows]
        width = np.maximum(hi - lo, 1e-12)
        with np.errstate(invalid="ignore", over="ignore"):
            excursion = np.maximum(v - hi, lo - v) / width  # (B,) in range widths
            hit = ok & (self.count[rows] >= self.learning_steps) & (excursion > self.tolerance)
            pos = np.nan_to_num(np.maximum(excursion, 0.0), nan=0.0)  # +inf -> float max: graded 1
            graded = pos / (pos + self.knee)
        score = np.where(hit, self.floor + (1.0 - self.floor) * graded, 0.0)
        self.lo[rows] = np.where(ok, np.minimum(lo, v), lo)
        self.hi[rows] = np.where(ok, np.maximum(hi, v), hi)
        self.count[rows] += ok
        out: F64 = score
        return out
