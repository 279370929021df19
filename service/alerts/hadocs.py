"""Home Assistant MQTT discovery documents for one stream (pure: no I/O).

Each stream becomes a Home Assistant device (the stream's device and tags) with entities
whose state topics are topics sensorcast or the sensors already publish:

- ``sensor`` *value*: the readings' own topic (``ingest.topic`` filled in for the stream),
  parsed from a bare number, a JSON object (``value``, or the quantity's field when the
  topic has no ``{quantity}``) or a JSON array (its last element). Streams whose topic
  cannot be known (``+``/``#`` levels, no ``{device}``, tags not in the topic) get none.
- ``sensor`` *forecast*: the next step's mean on ``alerts.forecast_topic``.
- ``binary_sensor`` per check, from the check's first alert on (before it, the retained
  state topic it reads, ``alerts.state_topic``, holds nothing): ``firing``/``resolved``.

Ids: Home Assistant allows ``[a-zA-Z0-9_-]`` in node and object ids, so a stream id is
reduced to those characters and suffixed with a hash of the full id (two streams that
reduce to the same text still get different ids).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service import __version__
from service.alerts.payload import topic_for
from service.config import Settings
from service.records import StreamKey

_NOT_ALLOWED = re.compile(r"[^a-zA-Z0-9_-]+")
_FIELD = re.compile(r"^\{(device|quantity|unit|tag_[A-Za-z0-9_]+)\}$")


@dataclass(frozen=True, slots=True)
class StreamSeen:
    """What discovery needs of a stream: its key's parts and (multivariate) its output features."""

    stream_id: str
    device: str
    quantity: str  # "*" for a multivariate (device) stream
    tags: tuple[tuple[str, str], ...]
    features: tuple[str, ...]  # a forecast's columns; the quantity's for a univariate stream
    multivariate: bool


def object_id(text: str) -> str:
    """``text`` as a Home Assistant object id: allowed characters only, injective by a hash suffix."""
    slug = _NOT_ALLOWED.sub("_", text).strip("_")[:48]
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{slug}_{digest}" if slug else digest


def readings_topic(template: str, device: str, quantity: str, tags: tuple[tuple[str, str], ...],
                   unit: str | None = None) -> tuple[str, str] | None:
    """(topic, payload key) a sensor publishes this stream's readings on, or None when the
    template does not pin it down (wildcard levels, a device or tag taken from the payload,
    a ``{unit}`` level while the unit is not known)."""
    tag_map = dict(tags)
    used_tags: set[str] = set()
    levels: list[str] = []
    has_device = has_quantity = False
    for level in template.split("/"):
        m = _FIELD.match(level)
        if m is None:
            if any(c in level for c in "+#{}"):
                return None
            levels.append(level)
            continue
        name = m.group(1)
        if name == "device":
            value, has_device = device, True
        elif name == "quantity":
            value, has_quantity = quantity, True
        elif name == "unit":
            if unit is None:
                return None
            value = unit
        else:
            tag = name[len("tag_"):]
            if tag not in tag_map:
                return None
            value = tag_map[tag]
            used_tags.add(tag)
        if not value or any(c in value for c in "/+#"):
            return None
        levels.append(value)
    if not has_device or used_tags != set(tag_map):
        return None  # the topic is shared with other devices or tag sets: the entity would mix them
    return "/".join(levels), "value" if has_quantity else quantity


def value_template(key: str) -> str:
    """Jinja (Home Assistant's ``value_json``) reading ``key`` from each payload form the decoder takes."""
    k = json.dumps(key)
    return ("{% set v = value_json %}{% if v is mapping %}{{ v[" + k + "] }}{% elif v is number %}{{ v }}"
            "{% else %}{{ (v | last)[" + k + "] }}{% endif %}")


def forecast_template(index: int) -> str:
    return f"{{{{ value_json.mean[0][{index}] }}}}"


FORECAST_ATTRIBUTES = ("{{ {'time': value_json.times[0], 'made_at': value_json.time, 'model': value_json.model, "
                       "'horizon': value_json.mean | length} | tojson }}")
ALERT_ATTRIBUTES = ("{{ {'kind': value_json.kind, 'since': value_json.onset_time, 'time': value_json.time, "
                    "'value': value_json.value, 'expected': value_json.expected, 'score': value_json.score} | tojson }}")


def config_topic(prefix: str, component: str, node: str, obj: str) -> str:
    return f"{prefix}/{component}/{node}/{obj}/config"


def availability_topic(settings: Settings) -> str:
    return settings.homeassistant.availability_topic.format(node_id=settings.homeassistant.node_id)


def stream_documents(settings: Settings, s: StreamSeen, units: Mapping[str, str | None]) -> dict[str, dict[str, Any]]:
    """Config topic -> discovery document for the stream's value and forecast sensors (its
    checks: ``check_document``, at their first alert). ``units``: quantity (a multivariate
    stream's feature) -> its unit, when known."""
    ha = settings.homeassistant
    node = ha.node_id
    docs: dict[str, dict[str, Any]] = {}
    quantities = s.features if s.multivariate else (s.quantity,)
    for i, q in enumerate(quantities):
        base = object_id(s.stream_id if not s.multivariate else f"{s.stream_id}/*/{q}")
        unit = units.get(q)
        where = readings_topic(settings.ingest.topic, s.device, q, s.tags, unit)
        if where is not None:
            doc = _common(settings, s, f"{base}_value", q, unit, with_availability=False)
            doc.update(state_topic=where[0], value_template=value_template(where[1]), state_class="measurement")
            docs[config_topic(ha.discovery_prefix, "sensor", node, f"{base}_value")] = doc
        fc_topic = settings.alerts.forecast_topic
        if fc_topic:
            doc = _common(settings, s, f"{base}_forecast", f"{q} forecast", unit)
            doc.update(
                state_topic=topic_for(fc_topic, s.device, s.quantity, s.stream_id),
                value_template=forecast_template(i), state_class="measurement",
                json_attributes_topic=topic_for(fc_topic, s.device, s.quantity, s.stream_id),
                json_attributes_template=FORECAST_ATTRIBUTES,
            )
            docs[config_topic(ha.discovery_prefix, "sensor", node, f"{base}_forecast")] = doc
    return docs


def check_document(settings: Settings, s: StreamSeen, check: str) -> dict[str, dict[str, Any]]:
    """The binary sensor of one check of the stream (none when no state topic is published)."""
    ha = settings.homeassistant
    state = settings.alerts.state_topic
    if not state:
        return {}
    obj = f"{object_id(s.stream_id)}_{check}"
    name = check.replace("_", " ") if s.multivariate else f"{s.quantity} {check.replace('_', ' ')}"
    doc = _common(settings, s, obj, name, None)
    topic = topic_for(state, s.device, s.quantity, s.stream_id, check)
    doc.update(
        state_topic=topic, value_template="{{ value_json.state }}", payload_on="firing", payload_off="resolved",
        device_class="problem", json_attributes_topic=topic, json_attributes_template=ALERT_ATTRIBUTES,
    )
    return {config_topic(ha.discovery_prefix, "binary_sensor", ha.node_id, obj): doc}


def _common(settings: Settings, s: StreamSeen, obj: str, name: str, unit: str | None, *,
            with_availability: bool = True) -> dict[str, Any]:
    node = settings.homeassistant.node_id
    device_key = StreamKey(s.device, s.quantity, s.tags).device_id
    doc: dict[str, Any] = {
        "name": name,
        "unique_id": f"sensorcast_{node}_{obj}",
        "device": {
            "identifiers": [f"sensorcast_{node}_{object_id(device_key)}"],
            "name": device_key,
            "manufacturer": "sensorcast",
            "model": "sensorcast stream",
            "sw_version": __version__,
        },
        "origin": {"name": "sensorcast", "sw_version": __version__},
    }
    if unit:
        doc["unit_of_measurement"] = unit
    if with_availability:
        # The value comes from the sensor itself and stays live while sensorcast is away; the
        # forecast and alert state are sensorcast's and go unavailable with it (its LWT).
        doc.update(availability_topic=availability_topic(settings), payload_available="online",
                   payload_not_available="offline")
    return doc
