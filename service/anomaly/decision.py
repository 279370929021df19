"""Alert decision per stream: M of N above threshold, hysteresis, cooldown.

Semantics (per stream, one update per fed step with a score; NaN scores are skipped):

- ``hot`` history: the last N steps, each 1 when ``score >= threshold``.
- ``warm`` history: the last N steps, each 1 when ``score >= clear_threshold``
  (``clear_threshold <= threshold``).
- not firing -> **firing** when at least M of the last N are hot and the stream is not in
  cooldown.
- firing -> **resolved** when fewer than M of the last N are at or above the clear
  threshold (the hysteresis band keeps a value hovering at the threshold from flapping).
- after resolving, no new firing until ``cooldown`` has passed (in stream time, so a
  backtest behaves like the live service).

Thresholds: the settings' threshold, else the model's default; a per-stream override
(``set_threshold``) wins. The clear threshold defaults to ``1 - 2 (1 - threshold)``
(0.98 for 0.99), floored at 0.5.

Vectorised over a batch of rows; histories are bitmasks (N <= 63).

>>> import numpy as np
>>> d = Decider(threshold=0.9, clear_threshold=None, min_count=2, window=3, cooldown_ns=0)
>>> d.grow(1)
>>> r = np.array([0])
>>> [d.update(r, np.array([s]), np.array([t]))[0].tolist() for t, s in enumerate([0.95, 0.95, 0.1])]
[[], [0], []]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from service.arrays import F64, I64, Col, IntArr, RowArrays


def default_clear(threshold: float) -> float:
    return max(0.5, 1.0 - 2.0 * (1.0 - threshold))


_I64_MIN = int(np.iinfo(np.int64).min)


class Decider(RowArrays):
    prefix = "decider."  # checkpoint keys
    hot = Col(np.uint64, fill=0)  # last N steps, bit 1: score >= threshold
    warm = Col(np.uint64, fill=0)  # last N steps, bit 1: score >= clear threshold
    firing = Col(np.bool_, fill=False)
    quiet_until = Col(np.int64, fill=_I64_MIN)  # cooldown: no new firing before (stream time, ns)
    row_threshold = Col(np.float64, fill=np.nan, reset=False)  # per-stream override; NaN: the default

    def __init__(
        self, threshold: float, clear_threshold: float | None, min_count: int, window: int, cooldown_ns: int
    ) -> None:
        if not 1 <= min_count <= window <= 63:
            raise ValueError(f"need 1 <= min_count <= window <= 63, found M={min_count} N={window}")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), found {threshold}")
        clear = default_clear(threshold) if clear_threshold is None else clear_threshold
        if not 0 < clear <= threshold:
            raise ValueError(f"clear_threshold must be in (0, threshold={threshold}], found {clear}")
        self.threshold = threshold
        self.clear_threshold = clear
        self.min_count = min_count
        self.window = window
        self.cooldown_ns = cooldown_ns
        self._mask = np.uint64((1 << window) - 1)
        super().__init__()

    # ``reset(rows)`` (from RowArrays) forgets the history and the firing state (the caller
    # emits 'resolved' first) and keeps a per-stream threshold; ``clear(rows)`` drops that too.

    def thresholds(self, rows: IntArr) -> tuple[F64, F64]:
        """(fire, clear) thresholds for these rows."""
        own = self.row_threshold[rows]
        fire = np.where(np.isnan(own), self.threshold, own)
        clear = np.where(np.isnan(own), self.clear_threshold, np.maximum(0.5, 1.0 - 2.0 * (1.0 - own)))
        return fire, np.minimum(clear, fire)

    def set_threshold(self, row: int, threshold: float | None) -> None:
        if threshold is not None and not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), found {threshold}")
        self.row_threshold[row] = np.nan if threshold is None else threshold

    def update(
        self, rows: IntArr, scores: F64, ts_ns: I64, extreme: F64 | None = None,
        hold: npt.NDArray[np.bool_] | None = None,
    ) -> tuple[IntArr, IntArr]:
        """Fold one score per row in; returns batch indices that fired and that resolved.

        ``extreme`` (B,): a score at or above it fires on that step alone, cooldown or not
        (M of N is for borderline evidence). ``hold`` (B,): rows that must not start firing
        now (a data-quality alert explains them)."""
        have = ~np.isnan(scores)
        idx = np.flatnonzero(have)
        if idx.size == 0:
            empty = np.zeros(0, np.intp)
            return empty, empty
        r = rows[idx]
        s = scores[idx]
        fire_t, clear_t = self.thresholds(r)
        one = np.uint64(1)
        hot = ((self.hot[r] << one) | (s >= fire_t).astype(np.uint64)) & self._mask
        warm = ((self.warm[r] << one) | (s >= clear_t).astype(np.uint64)) & self._mask
        self.hot[r] = hot
        self.warm[r] = warm
        firing = self.firing[r]
        n_hot = np.bitwise_count(hot)
        n_warm = np.bitwise_count(warm)
        fire = ~firing & (n_hot >= self.min_count) & (ts_ns[idx] >= self.quiet_until[r])
        if extreme is not None:
            fire |= ~firing & (s >= extreme[idx])
        if hold is not None:
            fire &= ~hold[idx]
        resolve = firing & (n_warm < self.min_count)
        self.firing[r[fire]] = True
        self.firing[r[resolve]] = False
        self.quiet_until[r[resolve]] = ts_ns[idx][resolve] + self.cooldown_ns
        return idx[fire], idx[resolve]
