"""Home Assistant MQTT discovery from a real ``sensorcast serve`` on a real mosquitto.

- Each stream's config topics are retained, valid discovery documents (JSON, the keys
  Home Assistant requires, ids in its allowed characters, one unique_id per entity, device
  info), for the value and the forecast, plus a check's binary sensor at its first alert.
- Every state topic they name carries messages, and their templates, rendered the way
  Home Assistant does (Jinja2 sandbox, ``value`` and ``value_json``), give a number for the
  sensors (each payload form the decoder takes: JSON object, JSON array, bare number) and
  ``firing``/``resolved`` for the binary sensors.
- A unit set afterwards (PUT /v1/streams/{id}/settings) reaches the documents, and the
  availability topic says ``online``, then ``offline`` (the last will) when the process dies;
  a clean stop (SIGTERM) publishes ``offline`` itself (a clean disconnect sends no last will).
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tests.integration.serving import ServeProcess
from tests.mqttwatch import Received, Watcher, publish_all
from tests.waiting import wait_until
from tools.localservers import Mosquitto
from tools.modelkit import KitSpec, write_model

pytestmark = pytest.mark.integration

C = 60 * 10**9
N = 30
CONFIG = re.compile(r"^homeassistant/(sensor|binary_sensor)/sensorcast/[a-zA-Z0-9_-]+/config$")
ALLOWED_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
AVAILABILITY = "sensorcast/sensorcast/availability"


publish = publish_all


def render(template: str, payload: bytes) -> str:
    """What Home Assistant's MQTT entity does with a payload: ``value`` and, when it parses, ``value_json``."""
    env = ImmutableSandboxedEnvironment()
    text = payload.decode("utf-8")
    variables: dict[str, Any] = {"value": text}
    with contextlib.suppress(ValueError):  # not JSON: Home Assistant leaves value_json undefined
        variables["value_json"] = json.loads(text)
    return env.from_string(template).render(**variables).strip()


@pytest.fixture
def broker(fresh_mosquitto: Callable[..., Mosquitto]) -> Mosquitto:
    return fresh_mosquitto()  # its own: retained discovery must not reach other tests


@pytest.fixture
def service(tmp_path: Path, broker: Mosquitto) -> Iterator[ServeProcess]:
    write_model(tmp_path / "models", KitSpec(name="m", mean=(20.0,), std=(3.0,), warmup_steps=5))
    svc = ServeProcess(
        tmp_path / "svc", broker.url, f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "models",
        extra_env={
            "SENSORCAST_MODELS__BINDINGS": '[{"model": "m", "rules": {"max": 50}}]',
            "SENSORCAST_HOMEASSISTANT__ENABLED": "true",
            "SENSORCAST_HOMEASSISTANT__REFRESH_S": "0.5",
        },
    )
    svc.start()
    yield svc
    svc.kill()


def test_discovery_documents_point_at_topics_that_carry_data(service: ServeProcess, broker: Mosquitto) -> None:
    watch = Watcher(broker.port, "#", client_id=f"w-{service.tag}")
    t0 = (time.time_ns() // C - N - 2) * C
    values = [20.0 + 0.1 * (i % 3) for i in range(N)]
    # pump-1 sends JSON objects, pump-2 JSON arrays; pump-2 ends out of range (max 50).
    msgs = [("sensors/pump-1/temperature", orjson.dumps({"ts": t0 + i * C, "value": v})) for i, v in enumerate(values)]
    msgs += [("sensors/pump-2/temperature", orjson.dumps([{"ts": t0 + i * C, "value": v}]))
             for i, v in enumerate([*values[:-3], 80.0, 80.0, 80.0])]
    try:
        publish(broker.port, msgs)

        def configs() -> dict[str, Received]:
            return {m.topic: m for m in watch.messages if m.topic.startswith("homeassistant/") and m.payload}

        # Per stream: value and forecast; pump-2 also out_of_range (and anomaly, if the jump scores).
        wait_until(lambda: len(configs()) >= 5, timeout=30, what="discovery documents")
        wait_until(lambda: any(m.topic.startswith("sensorcast/forecasts/pump-2") for m in watch.messages), timeout=30,
                   what="a forecast of pump-2")
        wait_until(lambda: any(m.topic == "sensorcast/state/pump-2/temperature/out_of_range" for m in watch.messages),
                   timeout=30, what="pump-2's out_of_range state")
        publish(broker.port, [("sensors/pump-1/temperature", b"21.5")])  # a bare number: stamped on receipt
        wait_until(lambda: sum(m.topic == "sensors/pump-1/temperature" for m in watch.messages) > N, what="echo")

        docs = {topic: m.json() for topic, m in configs().items()}
        assert _retained_on_new_subscriber(broker, set(docs))
        assert sum(t.startswith("homeassistant/sensor/") for t in docs) == 4, sorted(docs)
        assert any(t.endswith("_out_of_range/config") for t in docs), sorted(docs)
        assert not any("pump-1" in t and "binary_sensor" in t for t in docs)  # no alert: no state to show yet
        unique_ids = [d["unique_id"] for d in docs.values()]
        assert len(set(unique_ids)) == len(unique_ids)
        for topic, doc in docs.items():
            assert CONFIG.match(topic), topic
            assert ALLOWED_ID.match(topic.split("/")[3])
            assert {"name", "unique_id", "state_topic", "device", "origin"} <= set(doc), doc
            assert doc["device"]["manufacturer"] == "sensorcast" and doc["device"]["identifiers"], doc
            assert doc["device"]["name"] in ("pump-1", "pump-2")
            carried = [m for m in watch.messages if m.topic == doc["state_topic"] and m.payload]
            assert carried, f"{topic}: nothing was published on {doc['state_topic']}"
            for m in carried:
                got = render(doc["value_template"], m.payload)
                if topic.startswith("homeassistant/binary_sensor/"):
                    assert got in (doc["payload_on"], doc["payload_off"]), (topic, m.payload, got)
                    assert doc["availability_topic"] == AVAILABILITY
                else:
                    float(got)  # a number, whatever payload form the sensor used
            if "json_attributes_template" in doc:
                assert isinstance(orjson.loads(render(doc["json_attributes_template"], carried[-1].payload)), dict)

        value = next(d for t, d in docs.items() if "pump-1" in d["state_topic"] and t.endswith("_value/config"))
        assert value["state_topic"] == "sensors/pump-1/temperature"
        assert "availability_topic" not in value  # the sensor's own readings do not depend on sensorcast
        rendered = [render(value["value_template"], m.payload) for m in watch.messages if m.topic == value["state_topic"]]
        assert rendered[-1] == "21.5" and rendered[0] == "20.0"
        state = next(d for d in docs.values() if d["state_topic"] == "sensorcast/state/pump-2/temperature/out_of_range")
        last_state = [m for m in watch.messages if m.topic == state["state_topic"]][-1]
        assert render(state["value_template"], last_state.payload) == "firing"
        online = [m for m in watch.messages if m.topic == AVAILABILITY]
        assert online and online[-1].payload == b"online"

        # A unit set now reaches the documents at the next refresh.
        r = httpx_put(service, "/v1/streams/pump-1/temperature/settings", {"unit": "°C"})
        assert r == 200
        wait_until(lambda: any(m.json().get("unit_of_measurement") == "°C" for t, m in configs().items()
                               if "pump-1" in m.json()["state_topic"] and "sensor/" in t), timeout=15,
                   what="the unit in pump-1's documents")

        service.kill()  # SIGKILL: the broker publishes the last will
        wait_until(lambda: [m.payload for m in watch.messages if m.topic == AVAILABILITY][-1] == b"offline",
                   timeout=15, what="offline on the availability topic")
    finally:
        watch.close()


def httpx_put(svc: ServeProcess, path: str, body: dict[str, Any]) -> int:
    return httpx.put(svc.url + path, json=body, timeout=10).status_code


def _retained_on_new_subscriber(broker: Mosquitto, topics: set[str]) -> bool:
    """A late subscriber gets every config topic, flagged retained (Home Assistant may start after us)."""
    late = Watcher(broker.port, "homeassistant/#", client_id=f"late-{uuid.uuid4().hex[:6]}")
    try:
        got = late.wait_for(lambda m: {x.topic for x in m} >= topics, timeout=10)
        return {m.topic for m in got if m.retain} >= topics
    finally:
        late.close()


def test_a_clean_stop_says_offline(service: ServeProcess, broker: Mosquitto) -> None:
    watch = Watcher(broker.port, AVAILABILITY, client_id=f"a-{service.tag}")
    try:
        wait_until(lambda: any(m.payload == b"online" for m in watch.messages), what="online")
        assert service.kill(signal.SIGTERM) == -signal.SIGTERM  # uvicorn re-raises it after the orderly stop
        assert "pipeline stopped" in service.log.read_text()
        wait_until(lambda: watch.messages[-1].payload == b"offline", what="offline after SIGTERM")
        late = Watcher(broker.port, AVAILABILITY, client_id=f"l-{service.tag}")  # and it stays so, retained
        try:
            got = late.wait_for(lambda m: bool(m), timeout=5)
            assert [(m.payload, m.retain) for m in got] == [(b"offline", True)]
        finally:
            late.close()
    finally:
        watch.close()
