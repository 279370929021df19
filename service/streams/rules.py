"""A stream's effective alert rules: settings defaults < binding rules < the stream's own.

``resolve`` merges the three ``StreamRules`` layers into per-input-feature arrays the
stages read (NaN: no limit; 0 steps: off). A multivariate stream's ``features`` entries
win over its stream-wide fields for that feature.

>>> from service.config import AnomalySettings, StreamRules
>>> r = resolve(AnomalySettings(), StreamRules(max=100), StreamRules(max=80, lower=5), ["t"], 1.0)
>>> float(r.max[0]), float(r.lower[0]), r.accept_after_steps, r.silent_after_s
(80.0, 5.0, 600, 30.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.arrays import F64, I64
from service.config import AnomalySettings, StreamRules

ACCEPT_AFTER_S = 600.0  # default: a deviation lasting 10 minutes is the new level...
ACCEPT_MIN, ACCEPT_MAX = 8, 600  # ...but never fewer than 8 or more than 600 steps
SILENT_MIN_S = 30.0  # MQTT reconnects and gateway hiccups take seconds: no silent alert before this

_PER_FEATURE = ("min", "max", "max_rate", "stuck_steps", "stuck_tolerance", "lower", "upper")


@dataclass(frozen=True, slots=True)
class ResolvedRules:
    threshold: float | None  # None: the model's/settings' default
    accept_after_steps: int  # 0: never
    min: F64  # (F,) physical limits, NaN: none
    max: F64
    max_rate: F64  # (F,) units per second, NaN: none
    stuck_steps: I64  # (F,) 0: off
    stuck_tolerance: F64  # (F,)
    silent_after_s: float  # 0: off
    lower: F64  # (F,) operating limits for predicted_breach, NaN: none
    upper: F64
    breach_probability: float


def default_accept_after(cadence_s: float) -> int:
    return int(min(ACCEPT_MAX, max(ACCEPT_MIN, round(ACCEPT_AFTER_S / cadence_s))))


def _pick(layers: list[StreamRules | None], name: str) -> float | int | None:
    """The last layer's non-empty value of ``name``."""
    out = None
    for layer in layers:
        if layer is not None and getattr(layer, name) is not None:
            out = getattr(layer, name)
    return out


def resolve(
    anomaly: AnomalySettings, binding: StreamRules | None, own: StreamRules | None, features: list[str],
    cadence_s: float,
) -> ResolvedRules:
    """The rules of a stream whose model has input ``features`` at ``cadence_s``."""
    layers = [binding, own]
    threshold = _pick(layers, "threshold")
    accept = _pick(layers, "accept_after_steps")
    if accept is None:
        accept = anomaly.accept_after_steps if anomaly.accept_after_steps is not None else default_accept_after(cadence_s)
    silent = _pick(layers, "silent_after")
    if silent is None:  # the settings' default: never below SILENT_MIN_S
        silent_s = 0.0 if anomaly.silent_after == 0 else max(SILENT_MIN_S, anomaly.silent_after * cadence_s)
    else:  # set for this stream or binding: as given
        silent_s = float(silent) * cadence_s
    prob = _pick(layers, "breach_probability")
    defaults = {"stuck_steps": anomaly.stuck_steps, "stuck_tolerance": anomaly.stuck_tolerance}
    cols: dict[str, list[float]] = {name: [] for name in _PER_FEATURE}
    for f in features:
        # Feature entries of each layer win over that layer's stream-wide fields.
        fl: list[StreamRules | None] = []
        for layer in layers:
            fl.append(layer)
            fl.append(None if layer is None or layer.features is None else layer.features.get(f))
        for name in _PER_FEATURE:
            v = _pick(fl, name)
            if v is None:
                v = defaults.get(name)
            cols[name].append(np.nan if v is None else float(v))
    return ResolvedRules(
        threshold=None if threshold is None else float(threshold),
        accept_after_steps=int(accept),
        min=np.array(cols["min"]), max=np.array(cols["max"]), max_rate=np.array(cols["max_rate"]),
        stuck_steps=np.array(cols["stuck_steps"]).astype(np.int64),
        stuck_tolerance=np.array(cols["stuck_tolerance"]),
        silent_after_s=silent_s,
        lower=np.array(cols["lower"]), upper=np.array(cols["upper"]),
        breach_probability=float(anomaly.breach_probability if prob is None else prob),
    )
