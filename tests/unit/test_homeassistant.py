"""Home Assistant discovery documents, ids, templates and the stream cap (no broker: see
tests/integration/test_homeassistant.py for the real one)."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import ValidationError

from service.alerts.hadocs import (
    StreamSeen,
    check_document,
    object_id,
    readings_topic,
    stream_documents,
    value_template,
)
from service.alerts.homeassistant import HomeAssistantDiscovery
from service.config import Settings
from service.records import Forecast, StreamKey

ALLOWED = re.compile(r"^[a-zA-Z0-9_-]+$")


def ha_settings(**ha: Any) -> Settings:
    return Settings(homeassistant={"enabled": True, **ha})  # type: ignore[call-arg]


def render(template: str, payload: str) -> str:
    variables: dict[str, Any] = {"value": payload}
    with contextlib.suppress(ValueError):
        variables["value_json"] = json.loads(payload)
    return ImmutableSandboxedEnvironment().from_string(template).render(**variables)


def test_object_ids_use_allowed_characters_and_never_collide() -> None:
    names = ["a/b", "a_b", "a+b", "a#b", "pump-1/temperature;site=hq", "ü/x", "", "x" * 500]
    ids = [object_id(n) for n in names]
    assert all(ALLOWED.match(i) and len(i) <= 57 for i in ids), ids
    assert len(set(ids)) == len(ids)
    assert object_id("pump-1/temperature").startswith("pump-1_temperature_")


@pytest.mark.parametrize(("template", "tags", "unit", "expected"), [
    ("sensors/{device}/{quantity}", (), None, ("sensors/pump-1/temperature", "value")),
    ("sensors/{device}", (), None, ("sensors/pump-1", "temperature")),  # named fields in the payload
    ("site/{tag_site}/{device}/{quantity}", (("site", "hq"),), None, ("site/hq/pump-1/temperature", "value")),
    ("sensors/{device}/{quantity}", (("site", "hq"),), None, None),  # the tag comes from the payload
    ("sensors/+/{device}/{quantity}", (), None, None),  # a level we cannot know
    ("sensors/{device}/{quantity}/#", (), None, None),
    ("sensors/{quantity}", (), None, None),  # the device comes from the payload
    ("sensors/{device}/{quantity}/{unit}", (), "°C", ("sensors/pump-1/temperature/°C", "value")),
    ("sensors/{device}/{quantity}/{unit}", (), None, None),
])
def test_readings_topic(template: str, tags: tuple[tuple[str, str], ...], unit: str | None,
                        expected: tuple[str, str] | None) -> None:
    assert readings_topic(template, "pump-1", "temperature", tags, unit) == expected


def test_a_device_name_that_is_no_topic_level_gets_no_value_topic() -> None:
    assert readings_topic("sensors/{device}/{quantity}", "a/b", "t", ()) is None


@pytest.mark.parametrize(("key", "payload", "value"), [
    ("value", "21.5", "21.5"),
    ("value", '{"ts": 1700000000, "value": 21.5}', "21.5"),
    ("value", '[{"ts": 1, "value": 1.0}, {"ts": 2, "value": 21.5}]', "21.5"),
    ("temperature", '{"ts": 1, "temperature": 21.5, "humidity": 40}', "21.5"),
    ('we"ird', '{"we\\"ird": 21.5}', "21.5"),  # the key is a JSON-quoted literal in the template
])
def test_value_template_reads_every_payload_form(key: str, payload: str, value: str) -> None:
    assert render(value_template(key), payload) == value


def test_documents_of_a_multivariate_stream_cover_each_feature() -> None:
    s = ha_settings()
    seen = StreamSeen("press7", "press7", "*", (), ("temp", "pressure"), True)
    docs = stream_documents(s, seen, {"temp": "°C", "pressure": "bar"})
    assert len(docs) == 4  # value and forecast per feature
    fc = [d for t, d in docs.items() if t.endswith("_forecast/config")]
    assert {d["value_template"] for d in fc} == {"{{ value_json.mean[0][0] }}", "{{ value_json.mean[0][1] }}"}
    assert {d["state_topic"] for d in fc} == {"sensorcast/forecasts/press7"}
    values = sorted(d["state_topic"] for t, d in docs.items() if t.endswith("_value/config"))
    assert values == ["sensors/press7/pressure", "sensors/press7/temp"]
    assert all(d["device"]["name"] == "press7" for d in docs.values())
    assert {d["unit_of_measurement"] for t, d in docs.items() if "pressure" in d["name"]} == {"bar"}
    assert {d["unit_of_measurement"] for t, d in docs.items() if "temp" in d["name"]} == {"°C"}
    (topic, doc), = check_document(s, seen, "stuck").items()
    assert topic.startswith("homeassistant/binary_sensor/sensorcast/press7_") and topic.endswith("_stuck/config")
    assert doc["state_topic"] == "sensorcast/state/press7/stuck"


def test_no_state_topic_no_binary_sensor() -> None:
    s = Settings(homeassistant={"enabled": True}, alerts={"state_topic": ""})  # type: ignore[call-arg]
    assert check_document(s, StreamSeen("d/q", "d", "q", (), ("q",), False), "anomaly") == {}


def test_settings_turn_forecasts_on_and_need_alerts() -> None:
    assert ha_settings().alerts.forecast_topic == "sensorcast/forecasts/{stream}"
    kept = Settings(homeassistant={"enabled": True}, alerts={"forecast_topic": "fc/{stream}"})  # type: ignore[call-arg]
    assert kept.alerts.forecast_topic == "fc/{stream}"
    assert Settings().alerts.forecast_topic is None  # off: nothing changes
    with pytest.raises(ValidationError, match=r"needs alerts\.enabled"):
        Settings(homeassistant={"enabled": True}, alerts={"enabled": False})  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ha_settings(node_id="has space")


def _forecast(device: str) -> Forecast:
    return Forecast(key=StreamKey(device, "t"), ts_ns=0, cadence_s=60.0, features=("value",), mean=((1.0,),),
                    scale=None, model="m", model_version="1")


def test_streams_beyond_the_cap_are_counted_not_queued() -> None:
    ha = HomeAssistantDiscovery(ha_settings(max_streams=2))
    for _ in range(3):  # a stream is queued once, however many forecasts it makes
        for d in ("a", "b", "c"):
            ha.see_forecast(_forecast(d))
    assert ha._queue.qsize() == 2
    assert ha.refused == 3
