"""Parse InfluxDB line protocol payloads the way influxd 1.6.7 reads them.

Unescaping mirrors the server: in measurements, tag keys/values and field keys only
``\\,``, ``\\=`` and ``\\ `` are escapes; other backslashes are literal. String fields are
double-quoted (``\\"`` and ``\\\\`` inside). Only the shape is checked here; the decoder
turns fields into readings and refuses what is not numeric.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import DecodeError


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
        try:
            ts = int(parts[2])
        except ValueError:
            raise DecodeError("bad_line_protocol", f"bad timestamp {parts[2][:40]!r}") from None
    return LinePoint(measurement, tags, fields, ts)


def field_number(raw: str) -> float:
    """The numeric value of a raw field; DecodeError("non_numeric") for strings and booleans."""
    if raw.startswith('"'):
        raise DecodeError("non_numeric", f"string field {raw[:40]!r}")
    if raw in ("t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"):
        raise DecodeError("non_numeric", f"boolean field {raw!r}")
    text = raw[:-1] if raw[-1] in "iu" else raw
    try:
        return float(int(text)) if raw[-1] in "iu" else float(text)
    except ValueError:
        raise DecodeError("bad_line_protocol", f"bad field value {raw[:40]!r}") from None
