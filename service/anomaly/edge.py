"""Rising edge: keep a score only when it beats everything the stream scored recently.

An incident makes a run of high scores; an operator (and NAB) needs the first one. A
score that does not exceed the maximum of the stream's last ``window`` scores is
multiplied by ``damp``, so a threshold crossed at the onset of an event is not crossed
again by its aftermath, while a score that keeps rising (the event getting worse) still
passes. Online: the output at t depends on scores up to t only. On NAB this cut
false-positive rows by a third at no loss of detected windows (docs/nab.md).

>>> import numpy as np
>>> e = RisingEdge(window=3, damp=0.5)
>>> e.grow(1)
>>> [float(e.update(np.array([0]), np.array([s]))[0]) for s in (0.2, 0.9, 0.8, 0.95, 0.1, 0.1, 0.1, 0.7)]
[0.2, 0.9, 0.4, 0.95, 0.05, 0.05, 0.05, 0.7]
"""

from __future__ import annotations

import numpy as np

from service.arrays import F64, Col, IntArr, RowArrays


class RisingEdge(RowArrays):
    """Per-row ring of recent input scores; damps scores that are not a recent maximum."""

    ring = Col(np.float64, ("window",), -np.inf)  # (N, W) -inf: no score yet
    count = Col(np.int64, fill=0)

    def __init__(self, window: int = 50, damp: float = 0.5) -> None:
        # window 50: longer than an incident's tail of high scores; 20..100 scored alike on NAB.
        if window < 1 or not 0.0 <= damp <= 1.0:
            raise ValueError(f"window >= 1 and 0 <= damp <= 1 expected, found {window}, {damp}")
        self.window = window
        self.damp = damp
        super().__init__({"window": window})

    def update(self, rows: IntArr, score: F64) -> F64:
        """Scores (B,) -> the same scores, damped where not above the row's recent maximum."""
        s = np.asarray(score, np.float64)
        recent = self.ring[rows].max(axis=1)  # (B,) -inf before any score
        with np.errstate(invalid="ignore"):
            out: F64 = np.where(s > recent, s, s * self.damp)
        # NaN (no opinion) is neither stored as a maximum nor damped.
        out = np.where(np.isnan(s), s, out)
        slot = self.count[rows] % self.window
        self.ring[rows, slot] = np.where(np.isnan(s), -np.inf, s)
        self.count[rows] += 1
        return out
