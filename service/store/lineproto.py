"""InfluxDB line protocol: safe names, exact escaping, one f-string per point.

What influxd 1.6.7 does with escapes (found by ``tests/integration/test_lineproto_roundtrip.py``
against the real server): in measurements, tag keys and tag values it unescapes only
``\\,``, ``\\=`` and ``\\ ``; every other backslash is kept literally. So escaping those three
characters (commas and spaces for measurements) round-trips any name, except that a name
ending in a backslash would escape the separator after it, and newlines end the line.
Those cannot be represented and are refused by ``name_problem`` before anything is
written, rather than stored corrupted. influxdb-client's ``Point`` is not used: it costs
~6.4 us per point against ~0.8 us for this formatter (docs/measured.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

from service.records import Reading, StreamKey

MAX_NAME_LEN = 256
# Tag keys that would collide with the schema or with InfluxQL's time column.
RESERVED_TAG_KEYS = frozenset({"time", "device", "quantity", "value", "_field", "_measurement"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be stored safely (as a tag key or value), or None when it can."""
    if not name:
        return "empty"  # influxd silently drops tags with empty values
    if len(name) > MAX_NAME_LEN:
        return f"longer than {MAX_NAME_LEN} characters"
    if _CONTROL.search(name):
        return "contains a newline or control character"
    if name.endswith("\\"):
        return "ends with a backslash"
    if name != name.strip():
        # Leading/trailing blanks round-trip but are almost always a sender bug, and the
        # same "name" with and without them would be two streams.
        return "has leading or trailing whitespace"
    return None


def stream_problem(stream: StreamKey) -> str | None:
    """Why ``stream`` cannot be stored safely, or None."""
    for what, name in (("device", stream.device), ("quantity", stream.quantity)):
        p = name_problem(name)
        if p:
            return f"{what} {name[:40]!r} {p}"
    for k, v in stream.tags:
        if k in RESERVED_TAG_KEYS:
            return f"tag key {k!r} is reserved"
        p = name_problem(k) or name_problem(v)
        if p:
            return f"tag {k[:40]!r}={v[:40]!r} {p}"
    return None


def escape_tag(s: str) -> str:
    return s.translate(_TAG_ESCAPES)


def series_key_bytes(stream: StreamKey) -> int:
    """UTF-8 bytes of the stream's escaped ``,device=...,quantity=...[,k=v...]`` (the series key
    without the measurement), which influxd limits to 64 KiB in all."""
    n = 0
    for k, v in (("device", stream.device), ("quantity", stream.quantity), *stream.tags):
        n += 2 + len(escape_tag(k).encode()) + len(escape_tag(v).encode())
    return n


def escape_measurement(s: str) -> str:
    return s.translate(_MEASUREMENT_ESCAPES)


class LineFormatter:
    """Formats readings as line protocol; caches each stream's escaped series key."""

    def __init__(self, measurement: str) -> None:
        p = name_problem(measurement)
        if p:
            raise ValueError(f"measurement {measurement!r} {p}")
        self._measurement = escape_measurement(measurement)
        self._keys: dict[StreamKey, str] = {}

    def series_key(self, stream: StreamKey) -> str:
        key = self._keys.get(stream)
        if key is None:
            tags = [("device", stream.device), ("quantity", stream.quantity), *stream.tags]
            # influxd sorts tags itself, but sorted keys make its parse cheaper.
            tags.sort()
            key = self._measurement + "".join(f",{escape_tag(k)}={escape_tag(v)}" for k, v in tags)
            if len(self._keys) > 200_000:  # bound the cache; streams are re-escaped cheaply
                self._keys.clear()
            self._keys[stream] = key
        return key

    def lines(self, readings: Iterable[Reading]) -> bytes:
        """One line per reading; ``repr(float)`` round-trips exactly."""
        key = self.series_key
        return "\n".join(
            # float(): a numpy scalar would print as np.float64(...) and fail the whole batch.
            [f"{key(r.stream)} value={float(r.value)!r} {r.ts_ns}" for r in readings]
        ).encode()


def check_writable(readings: Sequence[Reading]) -> None:
    """Raise ValueError when a reading could not be stored exactly (defence in depth)."""
    for r in readings:
        p = stream_problem(r.stream)
        if p:
            raise ValueError(p)
        if not math.isfinite(r.value):
            raise ValueError(f"value {r.value!r} is not finite")
