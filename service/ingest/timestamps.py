"""Timestamps in payloads: epoch seconds / ms / us / ns inferred by magnitude, or ISO-8601.

Magnitude bands (absolute value): below 1e11 seconds (that is up to the year 5138),
below 1e14 milliseconds, below 1e17 microseconds, otherwise nanoseconds. Integers are
converted exactly; floats are rounded to the nearest nanosecond.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from service.errors import DecodeError

_BANDS = ((1e11, 1_000_000_000), (1e14, 1_000_000), (1e17, 1_000))


def to_ns(value: object) -> int:
    """Nanoseconds since the epoch from a number or an ISO-8601 string; raises DecodeError."""
    if isinstance(value, bool) or value is None:
        raise DecodeError("bad_timestamp", f"timestamp {value!r} is not a number or ISO-8601 text")
    if isinstance(value, int):
        a = abs(value)
        for limit, factor in _BANDS:
            if a < limit:
                return value * factor
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DecodeError("bad_timestamp", f"timestamp {value!r} is not finite")
        af = abs(value)
        for limit, factor in _BANDS:
            if af < limit:
                return round(value * factor)
        return round(value)
    if isinstance(value, str):
        return iso_to_ns(value)
    raise DecodeError("bad_timestamp", f"timestamp of type {type(value).__name__} is not understood")


def iso_to_ns(text: str) -> int:
    if len(text) > 64:  # the longest ISO-8601 form is ~40 characters; refuse before parsing
        raise DecodeError("bad_timestamp", f"timestamp text of {len(text)} characters is not ISO-8601")
    try:
        dt = datetime.fromisoformat(text.strip())
    except (ValueError, OverflowError):
        raise DecodeError("bad_timestamp", f"timestamp {text[:40]!r} is not ISO-8601") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)  # naive times are taken as UTC, the only sane default
    # Exact: whole seconds since the epoch plus the microseconds, no float rounding.
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
