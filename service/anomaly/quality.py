"""Data-quality checks on raw readings, vectorised over (rows, features); no state here.

The quality stage (``service/streams/quality_stage.py``) keeps the per-row arrays and
calls these on a batch: (B, F) readings with NaN for missing, limits of the same shape
with NaN for none. A missing reading never violates a check and never counts as normal.

>>> import numpy as np
>>> x = np.array([[5.0, np.nan, 200.0]])
>>> below, above = out_of_range(x, np.zeros((1, 3)), np.full((1, 3), 100.0))
>>> below.tolist(), above.tolist()
([[False, False, False]], [[False, False, True]])
>>> recover(np.array([[0, 3, 1]]), np.array([[False, False, True]]), np.array([[True, True, True]]), 3).tolist()
[[1, 3, 0]]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from service.arrays import F64, I64, IntArr
from service.records import NS_PER_S

Bool = npt.NDArray[np.bool_]

# A check that fired resolves after this many consecutive normal readings (hysteresis: a
# value hovering at a limit does not flap).
RECOVER_STEPS = 3
# stuck: a run must be longer than this many times the longest run the stream showed while
# it was not stuck (quantised or slow sensors repeat readings in normal operation).
STUCK_LEARNED_FACTOR = 3
# ...and the stream must have shown this many times stuck_steps readings first: the longest
# normal run is learned from a sample, and one too short flags a repeating sensor at once.
STUCK_WARMUP_FACTOR = 10
_OFF = np.iinfo(np.int64).max


def out_of_range(x: F64, lo: F64, hi: F64) -> tuple[Bool, Bool]:
    """(below, above) the physical limits; NaN reading or limit: False."""
    return x < lo, x > hi  # comparisons with NaN are False


def rate(x: F64, ts: I64, ref: F64, ref_ts: I64) -> F64:
    """|x - ref| per second since ``ref_ts``; NaN when either is missing or no time passed.

    ``ts`` is (B,), ``ref_ts`` (B, F)."""
    dt = (ts[:, None] - ref_ts).astype(np.float64) / NS_PER_S
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.abs(x - ref) / dt
    out: F64 = np.where(dt > 0, r, np.nan)
    return out


def rate_exceeded(x: F64, ts: I64, prev: F64, prev_ts: I64, valid: F64, valid_ts: I64, max_rate: F64) -> tuple[Bool, F64]:
    """(too fast, rate against the previous reading).

    A reading is too fast when its rate against the previous reading exceeds ``max_rate``
    and so does its rate against the last valid reading (when there is one). The second
    test keeps the return from a spike valid (it is far from the spike, close to the
    value before it), and the first keeps a new plateau after a fast ramp valid.
    """
    r_prev = rate(x, ts, prev, prev_ts)
    r_valid = rate(x, ts, valid, valid_ts)
    bad = (r_prev > max_rate) & ~(r_valid <= max_rate)
    return bad, r_prev


def recover(ok: I64, bad: Bool, seen: Bool, steps: int = RECOVER_STEPS) -> I64:
    """Consecutive normal readings since the last violation, capped at ``steps``: 0 on a
    violation, +1 on a normal reading, unchanged on a missing one. ``< steps``: active."""
    grown = np.minimum(ok + 1, steps)
    out: I64 = np.where(bad, 0, np.where(seen, grown, ok))
    return out


def run_step(x: F64, ref: F64, tol: F64) -> tuple[Bool, Bool]:
    """(continues, changed): a reading within ``tol`` of its run's first reading ``ref``
    continues the run; any other reading (or the first, ``ref`` NaN) starts a new one.
    A missing reading does neither."""
    seen = ~np.isnan(x)
    cont = seen & (np.abs(x - ref) <= tol)
    return cont, seen & ~cont


def stuck_limit(steps: I64, learned: I64, seen: I64) -> I64:
    """Steps of no change that make a run stuck: at least ``steps`` and more than
    ``STUCK_LEARNED_FACTOR`` x the longest normal run (``learned``). Off (int64 max) when
    ``steps`` is 0, while fewer than ``STUCK_WARMUP_FACTOR`` x ``steps`` readings were
    ``seen``, or when the stream never changed (``learned`` -1): a channel constant since
    it started (a setpoint, a closed valve) is not judged stuck on that alone."""
    need = np.maximum(steps, STUCK_LEARNED_FACTOR * learned + 1)
    on = (steps > 0) & (learned >= 0) & (seen >= STUCK_WARMUP_FACTOR * steps)
    out: I64 = np.where(on, need, _OFF)
    return out


def first(mask: Bool) -> IntArr:
    """Per row, the first feature where ``mask`` is set (0 when none)."""
    out: IntArr = np.argmax(mask, axis=1).astype(np.intp)
    return out
