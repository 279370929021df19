"""Fault kinds of the simulator: how long they last, how strong they are, what they do.

``apply`` writes one labelled event into a block of values (signals.py owns the blocks
and the seeding). Magnitudes are in noise sigmas of the stream:

- ``spike``, ``level_shift``: an offset of ``magnitude`` sigmas;
- ``drift``: a ramp from near zero to ``magnitude`` sigmas, then back;
- ``stuck``: the last value before the event, held;
- ``variance_burst``: extra noise, ``magnitude`` times the normal sigma;
- ``silent``: no reading at all (NaN on the grid; nothing is delivered);
- ``out_of_range``: a reading railed just beyond a physical limit of the quantity
  (above ``upper`` for a positive magnitude, below ``lower`` for a negative one, the
  other limit when that one is missing), ``|magnitude|`` sigmas (at least one unit of
  resolution) outside;
- ``degradation``: a slow linear ramp toward one of the stream's operating limits
  (``StreamSignal.operating_limits``, by the sign as for out_of_range) that ends
  ``|magnitude|`` sigmas beyond it, so it crosses the limit inside the event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

# The first five are the kinds of the original simulator: their label codes (index + 1)
# and the random draws for streams that use only them are unchanged.
ANOMALY_KINDS: tuple[str, ...] = (
    "spike", "level_shift", "stuck", "variance_burst", "drift", "silent", "out_of_range", "degradation",
)
CLASSIC_KINDS: tuple[str, ...] = ANOMALY_KINDS[:5]  # random anomalies default to these
MAX_EVENT_STEPS = 160  # random anomalies last at most this long, so they fit in a block

# (min, max) duration in steps and magnitude in noise sigmas for random anomalies.
KIND_DURATION: dict[str, tuple[int, int]] = {
    "spike": (1, 3),
    "level_shift": (30, 120),
    "stuck": (20, 80),
    "variance_burst": (20, 60),
    "drift": (40, MAX_EVENT_STEPS),
    "silent": (30, 120),
    "out_of_range": (1, 20),
    "degradation": (80, MAX_EVENT_STEPS),
}
KIND_MAGNITUDE: dict[str, tuple[float, float]] = {
    "spike": (8.0, 15.0),
    "level_shift": (5.0, 10.0),
    "stuck": (0.0, 0.0),  # holds the last value; no magnitude
    "variance_burst": (4.0, 8.0),  # noise multiplier
    "drift": (8.0, 14.0),  # offset reached at the end of the ramp
    "silent": (0.0, 0.0),  # no reading; no magnitude
    "out_of_range": (1.0, 5.0),  # beyond the physical limit
    "degradation": (2.0, 6.0),  # beyond the operating limit at the end of the ramp
}
UNSIGNED_KINDS = ("variance_burst", "stuck", "silent")


@dataclass(frozen=True, slots=True)
class Event:
    """A labelled anomaly: grid steps ``[start, end)``.

    ``crossing``: for a degradation, the first step whose value is beyond the operating
    limit (``StreamSignal.events`` fills it in; None for other kinds).
    """

    kind: str
    start: int
    end: int
    magnitude: float
    crossing: int | None = None


def pick_limit(magnitude: float, lower: float | None, upper: float | None) -> tuple[float, float]:
    """(limit, direction +1 above / -1 below) chosen by the magnitude's sign."""
    if upper is None and lower is None:
        raise ValueError("no limit to cross: the quantity has neither a lower nor an upper limit")
    above = magnitude >= 0
    if (above and upper is None) or (not above and lower is None):
        above = not above
    return (upper, 1.0) if above else (lower, -1.0)  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Context:
    """What ``apply`` needs of the stream besides the block."""

    sigma: float
    decimals: int
    physical: tuple[float | None, float | None]
    operating: tuple[float | None, float | None]
    clean_at: Callable[[int], float]  # clean value at any grid step
    burst_noise: Callable[[Event], NDArray[np.float64]]  # (end - start,) unit normals


def apply(
    ev: Event, values: NDArray[np.float64], clean: NDArray[np.float64], b0: int, ctx: Context,
    unclipped: NDArray[np.bool_],
) -> None:
    """Write ``ev`` into ``values`` (a block starting at grid step ``b0``) in place.

    ``unclipped`` marks the steps that must keep their value beyond the physical limits.
    """
    n = len(values)
    s, e = max(ev.start, b0), min(ev.end, b0 + n)
    if s >= e:
        return
    ls, le = s - b0, e - b0  # local slice
    steps = np.arange(s, e)
    sigma = ctx.sigma
    if ev.kind in ("spike", "level_shift"):
        values[ls:le] += ev.magnitude * sigma
    elif ev.kind == "drift":
        # Ramp from near zero to the full offset over the event, then snap back.
        values[ls:le] += ev.magnitude * sigma * (steps - ev.start + 1) / (ev.end - ev.start)
    elif ev.kind == "stuck":
        prev = ev.start - 1
        values[ls:le] = clean[prev - b0] if b0 <= prev < b0 + n else ctx.clean_at(prev)
    elif ev.kind == "variance_burst":
        extra = ctx.burst_noise(ev)
        values[ls:le] += extra[s - ev.start : e - ev.start] * sigma * ev.magnitude
    elif ev.kind == "silent":
        values[ls:le] = np.nan
    elif ev.kind == "out_of_range":
        limit, direction = pick_limit(ev.magnitude, *ctx.physical)
        offset = max(abs(ev.magnitude) * sigma, 10.0**-ctx.decimals)
        values[ls:le] = limit + direction * offset
        unclipped[ls:le] = True
    elif ev.kind == "degradation":
        limit, direction = pick_limit(ev.magnitude, *ctx.operating)
        # The ramp's full size takes the clean value at its last step |magnitude| sigmas
        # beyond the limit, whatever the daily cycle does meanwhile.
        last = ev.end - 1
        end_clean = clean[last - b0] if b0 <= last < b0 + n else ctx.clean_at(last)
        full = limit + direction * abs(ev.magnitude) * sigma - end_clean
        values[ls:le] += full * (steps - ev.start + 1) / (ev.end - ev.start)
    else:
        raise ValueError(f"anomaly kind {ev.kind!r} unknown (expected one of {ANOMALY_KINDS})")


def crossing(values: NDArray[np.float64], start: int, limit: float, direction: float) -> int | None:
    """First grid step (``values[0]`` is step ``start``) strictly beyond ``limit``."""
    beyond = np.flatnonzero((values - limit) * direction > 0)
    return start + int(beyond[0]) if beyond.size else None
