"""Units end to end: a real ``sensorcast serve`` with a real mosquitto.

- A unit sent in the JSON payload shows in GET /v1/streams, /v1/streams/{id} and
  /v1/points, and in the alert the stream then raises (MQTT alert payload and history).
- A binding's rules override the payload's unit, and the stream's own settings
  (PUT /v1/streams/{id}/settings) override both.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.integration.serving import ServeProcess
from tests.mqttwatch import Watcher, publish_all
from tests.waiting import wait_until
from tools.localservers import Mosquitto
from tools.modelkit import KitSpec, write_model

pytestmark = pytest.mark.integration

C = 60 * 10**9


def publish(port: int, topic: str, values: list[float], t0: int, unit: str) -> None:
    publish_all(port, [(topic, orjson.dumps({"ts": t0 + i * C, "value": v, "unit": unit}))
                       for i, v in enumerate(values)])


@pytest.fixture
def service(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[ServeProcess]:
    write_model(tmp_path / "models", KitSpec(name="m", mean=(20.0,), std=(3.0,), warmup_steps=5))
    bindings = [{"model": "m", "device": "meter*", "rules": {"unit": "kWh"}}, {"model": "m", "rules": {"max": 50}}]
    svc = ServeProcess(
        tmp_path / "svc", mosquitto.url, f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "models",
        extra_env={"SENSORCAST_MODELS__BINDINGS": orjson.dumps(bindings).decode()},
    )
    svc.start()
    yield svc
    svc.kill()


def unit_of(svc: ServeProcess, stream: str) -> str | None:
    r = svc.get(f"/v1/streams/{stream}")
    return r.json().get("unit") if r.status_code == 200 else None


def test_payload_unit_in_streams_points_and_alerts(service: ServeProcess, mosquitto: Mosquitto) -> None:
    watcher = Watcher(mosquitto.port, "sensorcast/alerts/#", client_id=f"w-{uuid.uuid4().hex[:6]}")
    try:
        t0 = (time.time_ns() // C - 30) * C
        # Out of range (max 50 from the second binding's rules) after 24 normal readings.
        publish(mosquitto.port, "sensors/pump-1/temperature", [20.0 + 0.1 * (i % 3) for i in range(24)] + [80.0] * 5,
                t0, "°C")
        wait_until(lambda: unit_of(service, "pump-1/temperature") == "°C", timeout=30, what="the payload's unit")
        listed = {s["id"]: s for s in service.get("/v1/streams").json()}
        assert listed["pump-1/temperature"]["unit"] == "°C"
        assert service.get("/v1/points/pump-1/temperature").json()["unit"] == "°C"

        msgs = watcher.wait_for(lambda ms: any(m.json()["check"] == "out_of_range" for m in ms), timeout=30)
        fired = [m.json() for m in msgs if m.json()["check"] == "out_of_range"]
        assert fired and fired[0]["state"] == "firing" and fired[0]["unit"] == "°C", fired
        wait_until(lambda: service.get("/v1/alerts", params={"stream": "pump-1/temperature"}).json(), timeout=10,
                   what="the alert in the history")
        history = service.get("/v1/alerts", params={"stream": "pump-1/temperature"}).json()
        assert {a["unit"] for a in history} == {"°C"}, history
    finally:
        watcher.close()


def test_binding_then_own_settings_override_the_payload(service: ServeProcess, mosquitto: Mosquitto) -> None:
    t0 = (time.time_ns() // C - 30) * C
    publish(mosquitto.port, "sensors/meter-1/energy", [20.0 + 0.1 * (i % 3) for i in range(10)], t0, "Wh")
    wait_until(lambda: service.get("/v1/streams/meter-1/energy").status_code == 200, timeout=30, what="the stream")
    assert unit_of(service, "meter-1/energy") == "kWh"  # the binding's rules win over the payload
    r = httpx.put(f"{service.url}/v1/streams/meter-1/energy/settings", json={"unit": "MWh"}, timeout=10)
    assert r.status_code == 200, r.text
    assert unit_of(service, "meter-1/energy") == "MWh"  # the stream's own settings win over both
    r = httpx.put(f"{service.url}/v1/streams/meter-1/energy/settings", json={"unit": "a\nb"}, timeout=10)
    assert r.status_code == 422, r.text  # a control character is refused in settings too


def test_multivariate_units_per_feature(tmp_path: Path, mosquitto: Mosquitto) -> None:
    write_model(tmp_path / "models", KitSpec(name="mv", features=("temperature", "pressure"), mean=(20.0, 1.0),
                                             std=(3.0, 0.2), warmup_steps=5))
    bindings = [{"model": "mv", "device": "press*", "rules": {"features": {"pressure": {"max": 50}}}}]
    svc = ServeProcess(tmp_path / "svc", mosquitto.url, f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "models",
                       extra_env={"SENSORCAST_MODELS__BINDINGS": orjson.dumps(bindings).decode()})
    svc.start()
    watcher = Watcher(mosquitto.port, "sensorcast/alerts/#", client_id=f"w-{uuid.uuid4().hex[:6]}")
    try:
        t0 = (time.time_ns() // C - 30) * C
        # Both quantities of each step together: a device's bucket is fed once both have come.
        for i in range(29):
            publish(mosquitto.port, "sensors/press7/temperature", [20.0 + 0.1 * (i % 3)], t0 + i * C, "°C")
            publish(mosquitto.port, "sensors/press7/pressure", [80.0 if i >= 24 else 1.0 + 0.01 * (i % 3)], t0 + i * C,
                    "bar")

        def units() -> dict[str, str] | None:
            r = svc.get("/v1/streams/press7")
            return r.json().get("units") if r.status_code == 200 else None

        wait_until(lambda: units() == {"temperature": "°C", "pressure": "bar"}, timeout=30, what="units per feature")
        s = svc.get("/v1/streams/press7").json()
        assert s["unit"] == s["units"][s["feature"]]  # the unit of the numbers shown
        msgs = watcher.wait_for(lambda ms: any(m.json()["check"] == "out_of_range" for m in ms), timeout=30)
        fired = [m.json() for m in msgs if m.json()["check"] == "out_of_range"]
        assert fired[0]["quantity"] == "pressure" and fired[0]["unit"] == "bar", fired
    finally:
        watcher.close()
        svc.kill()
