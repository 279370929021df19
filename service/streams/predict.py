"""Stateless forecasts: a fresh state rolled over a given history (``POST /v1/predict``).

Rows are consecutive model steps, run in one call of the model's sequence form
(``ModelRuntime.sequence``); each row's timestamp is labelled by the end of its
cadence bucket, as on the live path, so predicting over a stream's history gives exactly
its live forecast (tests/unit/test_engine.py).
"""

from __future__ import annotations

import math
import time

import numpy as np

from service.records import NS_PER_S, Forecast
from service.runtime.registry import ModelRegistry
from service.runtime.timefeatures import time_features

_F32_MAX = float(np.finfo(np.float32).max)


def predict(
    registry: ModelRegistry,
    model: str,
    version: str | None,
    values: list[list[float | None]],
    timestamps_ns: list[int] | None = None,
    cadence: float | None = None,
) -> Forecast:
    """Forecast from a given history with a fresh state (no stream state touched).

    Raises ModelError for an unknown model/version, ValueError when the history does
    not fit the model (feature count, lengths, order of timestamps, cadence).
    """
    loaded = registry.get(model, version)
    m = loaded.manifest
    if cadence is not None and not math.isclose(cadence, m.cadence_s):
        raise ValueError(f"cadence {cadence} s does not match model {m.name}/{m.version} cadence {m.cadence_s} s")
    if not values:
        raise ValueError("values is empty: need at least one step of history")
    n_f = len(m.features)
    for i, row in enumerate(values):
        if len(row) != n_f:
            raise ValueError(f"values[{i}] has {len(row)} features, model expects {n_f} {list(m.features)}")
    try:
        wide = np.array([[math.nan if v is None else v for v in row] for row in values], np.float64)  # (T, F)
    except (TypeError, ValueError) as e:
        raise ValueError(f"values must be numbers: {e}") from e
    if bool((np.abs(wide) >= _F32_MAX).any()):
        raise ValueError(f"values must be finite and within float32 range (|v| < {_F32_MAX:.3g}); NaN/None = missing")
    x = wide.astype(np.float32)
    c_ns = round(m.cadence_s * NS_PER_S)
    if timestamps_ns is None:
        if m.time_features:
            raise ValueError(f"model {m.name} uses time features {m.time_features}: timestamps_ns are required")
        end = time.time_ns() // c_ns * c_ns
        ts = np.arange(end - (len(values) - 1) * c_ns, end + 1, c_ns, dtype=np.int64)
    else:
        if len(timestamps_ns) != len(values):
            raise ValueError(f"{len(timestamps_ns)} timestamps for {len(values)} rows of values")
        ts = np.asarray(timestamps_ns, np.int64)
        if ts.size > 1 and bool((np.diff(ts) <= 0).any()):
            raise ValueError("timestamps_ns must be strictly increasing")
        # Label each row by the end of its cadence bucket, as the live path does (the
        # time features and the forecast's time then match a live stream's exactly).
        ts = -(-ts // c_ns) * c_ns
    rt = loaded.runtime
    if m.kind == "step":
        state = np.zeros((1, m.state_size), np.float32)  # (1, S)
        tfs = time_features(ts, m.time_features) if m.time_features else None  # (T, K)
        # One call over the whole history (the sequence graph), equal to a call per step.
        fc, sc, state = rt.sequence(x[None], state, None if tfs is None else tfs[None])
    else:
        length = m.window or 1
        win = np.full((1, length, n_f), np.nan, np.float32)  # (1, L, F), NaN-padded on the left
        tail = x[-length:]
        win[0, length - tail.shape[0] :] = tail
        wts = np.zeros(length, np.int64)
        wts[length - tail.shape[0] :] = ts[-length:]
        tfw = time_features(wts[None, :], m.time_features) if m.time_features else None  # (1, L, K)
        fc, sc = rt.window(win, tfw)
    assert fc is not None
    return Forecast(
        key=None, ts_ns=int(ts[-1]), cadence_s=m.cadence_s, features=tuple(m.output_features),
        mean=tuple(tuple(r) for r in fc[0].tolist()),
        scale=None if sc is None else tuple(tuple(r) for r in sc[0].tolist()),
        model=m.name, model_version=m.version,
    )
