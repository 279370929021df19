"""Calendar features both the trainer and the service compute the same way.

Each is a sine or cosine of a UTC phase so that midnight and 23:59 are neighbours.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

NS_PER_S = 1_000_000_000
_DAY = 86_400.0
_WEEK = 7 * _DAY
_YEAR = 365.2425 * _DAY

# name -> (period in seconds, phase offset in seconds, trig function)
_FEATURES = {
    "hour_sin": (_DAY, 0.0, np.sin),
    "hour_cos": (_DAY, 0.0, np.cos),
    # 1970-01-01 was a Thursday: shift so the week starts on Monday 00:00 UTC.
    "dow_sin": (_WEEK, 3 * _DAY, np.sin),
    "dow_cos": (_WEEK, 3 * _DAY, np.cos),
    "doy_sin": (_YEAR, 0.0, np.sin),
    "doy_cos": (_YEAR, 0.0, np.cos),
}
NAMES = tuple(_FEATURES)


def time_features(ts_ns: npt.ArrayLike, names: list[str] | tuple[str, ...]) -> npt.NDArray[np.float32]:
    """Features for timestamps ``ts_ns`` (any shape) -> array of shape (*ts.shape, K)."""
    unknown = [n for n in names if n not in _FEATURES]
    if unknown:
        raise ValueError(f"unknown time features {unknown}; known: {list(NAMES)}")
    seconds = np.asarray(ts_ns, dtype=np.int64) // NS_PER_S
    out = np.empty((*seconds.shape, len(names)), dtype=np.float32)
    for k, name in enumerate(names):
        period, offset, fn = _FEATURES[name]
        phase = ((seconds + offset) % period) / period * 2 * np.pi
        out[..., k] = fn(phase)
    return out
