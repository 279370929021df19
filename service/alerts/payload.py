"""What goes on the wire: alert and forecast JSON payloads and their MQTT topics.

Payloads carry every field of the record plus ISO 8601 UTC times, so a subscriber needs
nothing else to explain an alert. Topics come from templates with ``{device}``,
``{quantity}`` and ``{stream}``; values are made topic-safe (no ``/``, ``+``, ``#``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from service.records import Alert, Forecast

_UNSAFE = str.maketrans({"/": "_", "+": "_", "#": "_", "\x00": "_"})


def iso_time(ts_ns: int) -> str:
    """``2024-01-01T00:00:00.000000Z`` (microseconds; ns stay in the ``*_ns`` field)."""
    dt = datetime.fromtimestamp(ts_ns // 1000 / 1_000_000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def topic_for(template: str, device: str, quantity: str, stream_id: str) -> str:
    """Fill a topic template; a value can never add topic levels or wildcards."""
    return template.format(
        device=device.translate(_UNSAFE),
        quantity=quantity.translate(_UNSAFE),
        stream=stream_id.translate(_UNSAFE),
    )


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
        "extra": dict(alert.extra),
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
