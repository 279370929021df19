"""What goes on the wire: alert and forecast JSON payloads and their MQTT topics.

Payloads carry every field of the record plus ISO 8601 UTC times, so a subscriber needs
nothing else to explain an alert. Topics come from templates with ``{device}``,
``{quantity}`` and ``{stream}``. Values are escaped injectively, so two streams never
share a topic and a value never adds a level or a wildcard: each name is escaped as in
stream ids (``%``, ``/``, ``;``, ``=`` and control characters become ``%XX``, UTF-8 bytes),
then ``+``, ``#`` and what MQTT brokers refuse in topics (Unicode non-characters,
surrogates) are percent-encoded too. ``{stream}`` is the stream id escaped the same way:
its one unescaped ``/`` (between device and quantity) stays a level separator, so
``{device}/{quantity}`` and ``{stream}`` give the same topic for a stream without tags.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson

from service.records import Alert, Forecast, escape_id_part

# Beyond the id escapes: MQTT wildcards and the code points mosquitto refuses in a topic
# (it drops the connection: an alert would then be retried forever).
_NONCHARS = "".join(chr(plane | 0xFFFE) + chr(plane | 0xFFFF) for plane in range(0, 0x110000, 0x10000))
_TOPIC_UNSAFE = re.compile("[+#\ufdd0-\ufdef\ud800-\udfff" + _NONCHARS + "]")


def iso_time(ts_ns: int) -> str:
    """``2024-01-01T00:00:00.000000Z`` (microseconds; ns stay in the ``*_ns`` field)."""
    dt = datetime.fromtimestamp(ts_ns // 1000 / 1_000_000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _topic_safe(escaped: str) -> str:
    """An id-escaped text with ``+``, ``#`` and broker-refused code points percent-encoded.

    Injective: id escaping leaves no ``%`` but its own escapes, so ``%2B`` can only be ``+``.
    """
    if _TOPIC_UNSAFE.search(escaped) is None:
        return escaped
    return _TOPIC_UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogatepass")), escaped)


def topic_level(name: str) -> str:
    """``name`` as one topic level: never a separator, a wildcard or a refused character."""
    return _topic_safe(escape_id_part(name))


def topic_for(template: str, device: str, quantity: str, stream_id: str, check: str = "anomaly") -> str:
    """Fill a topic template; a value can never add topic levels or wildcards.

    ``stream_id`` is an engine id (``StreamKey.id`` or ``device_id``): already escaped.
    ``check`` is one of ``records.CHECKS`` (plain names).
    """
    return template.format(
        device=topic_level(device), quantity=topic_level(quantity), stream=_topic_safe(stream_id),
        check=topic_level(check),
    )


def topic_filter(template: str) -> str:
    """An MQTT filter matching every topic of ``template``: ``+`` per placeholder level;
    ``{stream}`` spans one or two levels (device ids have no '/'), so it ends the filter with ``#``."""
    levels = []
    for level in template.split("/"):
        if "{stream}" in level:
            levels.append("#")
            break
        levels.append("+" if "{" in level else level)
    return "/".join(levels)


def alert_dict(alert: Alert) -> dict[str, Any]:
    return {
        "stream_id": alert.stream_id,
        "device": alert.device,
        "quantity": alert.quantity,
        "state": alert.state,
        "time": iso_time(alert.ts_ns),
        "ts_ns": alert.ts_ns,
        "value": alert.value,
        "expected": alert.expected,
        "lower": alert.lower,
        "upper": alert.upper,
        "score": alert.score,
        "model": alert.model,
        "model_version": alert.model_version,
        "warm": alert.warm,
        "check": alert.check,
        "kind": alert.kind,
        "onset_time": None if alert.onset_ns is None else iso_time(alert.onset_ns),
        "onset_ns": alert.onset_ns,
        "onset_value": alert.onset_value,
        "onset_expected": alert.onset_expected,
        "contributors": [[name, share] for name, share in alert.contributors],
        "extra": dict(alert.extra),
        "unit": alert.unit,
    }


def alert_payload(alert: Alert) -> bytes:
    # OPT_SERIALIZE_NUMPY is not needed: records hold plain floats. NaN becomes null.
    return orjson.dumps(alert_dict(alert))


def forecast_dict(fc: Forecast) -> dict[str, Any]:
    step_ns = round(fc.cadence_s * 1e9)
    return {
        "stream_id": fc.stream_id,
        "time": iso_time(fc.ts_ns),
        "ts_ns": fc.ts_ns,
        "cadence_s": fc.cadence_s,
        "features": list(fc.features),
        "times": [iso_time(fc.ts_ns + (h + 1) * step_ns) for h in range(len(fc.mean))],
        "mean": [list(row) for row in fc.mean],
        "scale": None if fc.scale is None else [list(row) for row in fc.scale],
        "model": fc.model,
        "model_version": fc.model_version,
    }


def forecast_payload(fc: Forecast) -> bytes:
    return orjson.dumps(forecast_dict(fc))
