"""Parse InfluxDB line protocol payloads the way influxd 1.6.7 reads them.

Unescaping mirrors the server: in measurements, tag keys/values and field keys only
``\\,``, ``\\=`` and ``\\ `` are escapes; other backslashes are literal. String fields are
double-quoted (``\\"`` and ``\\\\`` inside). Only the shape is checked here; the decoder
turns fields into readings and refuses what is not numeric.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from service.errors import DecodeError

_BOOLEANS = frozenset(("t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"))
# ASCII only: Python's int()/float() would also take "1_000" and other scripts' digits.
# Possessive quantifiers (*+, ++): no backtracking, so a 64 KiB digit string costs linear time.
_INTEGER = re.compile(r"([+-]?)([0-9]++)i\Z|(\+?)([0-9]++)u\Z")  # signed 3i or unsigned 7u
_FLOAT = re.compile(r"[+-]?(?:[0-9]++(?:\.[0-9]*+)?|\.[0-9]++)(?:[eE][+-]?[0-9]++)?\Z")
_TIMESTAMP = re.compile(r"-?[0-9]{1,19}\Z")  # int64 nanoseconds at most
_MAX_FLOAT_DIGITS = 309  # 1.8e308 is the largest float


@dataclass(frozen=True, slots=True)
class LinePoint:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, str]  # raw field text: 1.5, 3i, 7u, true, "text"
    ts: int | None


def _split(text: str, sep: str, quotes: bool = False, limit: int = -1) -> list[str]:
    """Split at unescaped ``sep`` (outside double quotes when ``quotes``), keeping escapes.

    As in influxd 1.6.7's scanner, a separator is escaped exactly when the character
    before it is a backslash (whether or not that backslash is itself escaped).
    """
    out: list[str] = []
    start = 0
    in_q = False
    for i, c in enumerate(text):
        if quotes and c == '"' and (i == 0 or text[i - 1] != "\\"):
            in_q = not in_q
        elif c == sep and not in_q and (i == 0 or text[i - 1] != "\\"):
            out.append(text[start:i])
            start = i + 1
            if limit > 0 and len(out) == limit:
                break
    if in_q:
        raise DecodeError("bad_line_protocol", "unterminated string field")
    out.append(text[start:])
    return out


def _unescape(s: str) -> str:
    if "\\" not in s:
        return s
    return s.replace("\\,", ",").replace("\\=", "=").replace("\\ ", " ")


def parse_line(line: str) -> LinePoint:
    # The series part holds no quoted strings; the fields part may.
    head = _split(line, " ", limit=1)
    parts = [head[0]] + (_split(head[1], " ", quotes=True) if len(head) > 1 else [])
    parts = [p for p in parts if p != ""]  # several spaces between sections are allowed
    if len(parts) not in (2, 3):
        raise DecodeError("bad_line_protocol", f"expected 'series fields [timestamp]': {line[:200]!r}")
    series = _split(parts[0], ",")
    measurement = _unescape(series[0])
    if not measurement:
        raise DecodeError("bad_line_protocol", f"missing measurement: {line[:200]!r}")
    tags: dict[str, str] = {}
    for t in series[1:]:
        kv = _split(t, "=")
        if len(kv) != 2 or not kv[0] or not kv[1]:
            raise DecodeError("bad_line_protocol", f"bad tag {t[:80]!r}")
        tags[_unescape(kv[0])] = _unescape(kv[1])
    fields: dict[str, str] = {}
    for f in _split(parts[1], ",", quotes=True):
        kv = _split(f, "=", quotes=True, limit=1)
        if len(kv) != 2 or not kv[0] or not kv[1]:
            raise DecodeError("bad_line_protocol", f"bad field {f[:80]!r}")
        fields[_unescape(kv[0])] = kv[1]
    ts = None
    if len(parts) == 3:
        if _TIMESTAMP.match(parts[2]) is None:
            raise DecodeError("bad_line_protocol", f"bad timestamp {parts[2][:40]!r} (expected int64 nanoseconds)")
        ts = int(parts[2])
    return LinePoint(measurement, tags, fields, ts)


def field_number(raw: str) -> float:
    """The numeric value of a raw field; DecodeError("non_numeric") for strings and booleans,
    ("not_finite") for NaN, infinities and integers beyond a float, ("bad_line_protocol")
    for anything else that is not an ASCII number (no ``_``, no other scripts' digits)."""
    if raw.startswith('"'):
        raise DecodeError("non_numeric", f"string field {raw[:40]!r}")
    if raw in _BOOLEANS:
        raise DecodeError("non_numeric", f"boolean field {raw!r}")
    m = _INTEGER.match(raw)
    if m is not None:
        sign, digits = (m.group(1), m.group(2)) if m.group(2) is not None else ("", m.group(4))
        digits = digits.lstrip("0") or "0"
        # Digits are counted before int(): past 309 no float holds the value, and past
        # 4300 int() itself refuses (ValueError), so huge integers never reach it.
        if len(digits) > _MAX_FLOAT_DIGITS:
            raise DecodeError("not_finite", f"integer field of {len(digits)} digits is too large for a float")
        try:
            return float(int(sign + digits))
        except OverflowError:
            raise DecodeError("not_finite", f"integer field {raw[:40]!r}... is too large for a float") from None
    if _FLOAT.match(raw) is not None:
        return float(raw)  # never raises; overflow gives inf, which the decoder refuses
    if raw.lstrip("+-").lower() in ("nan", "inf", "infinity"):
        raise DecodeError("not_finite", f"field value {raw[:40]!r}")
    raise DecodeError("bad_line_protocol", f"bad field value {raw[:40]!r}")
