"""Silence and ack end to end: a real ``sensorcast serve`` with a real mosquitto.

A silenced stream's alert is in GET /v1/alerts (marked silenced) and on its retained
state topic, but not on the alert event topic; the silence survives a restart; once it
is deleted, the stream's alerts are published again. The history's id acks the alert.
"""

from __future__ import annotations

import signal
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
STREAM = "pump-1/temperature"


def publish(port: int, values: list[float], t0: int) -> None:
    publish_all(port, [("sensors/pump-1/temperature", orjson.dumps({"ts": t0 + i * C, "value": v}))
                       for i, v in enumerate(values)])


@pytest.fixture
def service(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[ServeProcess]:
    write_model(tmp_path / "models", KitSpec(name="m", mean=(20.0,), std=(3.0,), warmup_steps=5))
    prefix = f"sil-{uuid.uuid4().hex[:6]}"  # topics of this test's own: no other test's retained states
    svc = ServeProcess(
        tmp_path / "svc", mosquitto.url, f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "models",
        extra_env={"SENSORCAST_MODELS__BINDINGS": orjson.dumps([{"model": "m", "rules": {"max": 50}}]).decode(),
                   "SENSORCAST_ALERTS__TOPIC": f"{prefix}/alerts/{{stream}}",
                   "SENSORCAST_ALERTS__STATE_TOPIC": f"{prefix}/state/{{stream}}/{{check}}"},
    )
    svc.start()
    yield svc
    svc.kill()


def _out_of_range(svc: ServeProcess) -> list[dict[str, object]]:
    r = svc.get("/v1/alerts", params={"stream": STREAM, "check": "out_of_range"})
    return list(r.json()) if r.status_code == 200 else []


def test_a_silenced_stream_is_recorded_not_published_until_unsilenced(
    service: ServeProcess, mosquitto: Mosquitto
) -> None:
    prefix = service.extra_env["SENSORCAST_ALERTS__TOPIC"].split("/", 1)[0]
    until = int(time.time()) + 3600
    r = httpx.put(f"{service.url}/v1/streams/{STREAM}/silence", params={"until": str(until), "reason": "test"},
                  timeout=10)
    assert r.status_code == 200, r.text  # ahead of the stream: it is not served yet
    # The silence is durable: a restart keeps it.
    service.kill(signal.SIGTERM)
    service.start()
    assert service.get(f"/v1/streams/{STREAM}/silence").json()["reason"] == "test"

    watcher = Watcher(mosquitto.port, f"{prefix}/#", client_id=f"w-{uuid.uuid4().hex[:6]}")
    try:
        t0 = (time.time_ns() // C - 60) * C
        publish(mosquitto.port, [20.0 + 0.1 * (i % 3) for i in range(24)] + [80.0] * 5, t0)  # max is 50
        wait_until(lambda: _out_of_range(service), timeout=30, what="the silenced alert in the history")
        (fired,) = _out_of_range(service)
        assert fired["state"] == "firing" and fired["silenced"] is True and isinstance(fired["id"], int)
        status = service.get(f"/v1/streams/{STREAM}").json()
        assert status["silenced_until"] is not None and status["status"] == "firing"
        # The retained state still says what is true; it is sent after the event would be
        # (one outbox, in order): once it is here, no event can follow.
        msgs = watcher.wait_for(lambda ms: any("/state/" in m.topic for m in ms), timeout=15)
        assert [m.json()["state"] for m in msgs if "/state/" in m.topic] == ["firing"]
        assert not [m for m in msgs if "/alerts/" in m.topic], [m.topic for m in msgs]

        # Unsilenced: back in range (resolved), out of range again (firing): both published.
        assert httpx.delete(f"{service.url}/v1/streams/{STREAM}/silence", timeout=10).status_code == 204
        assert service.get(f"/v1/streams/{STREAM}").json()["silenced_until"] is None
        publish(mosquitto.port, [20.0] * 10 + [80.0] * 3, t0 + 29 * C)
        msgs = watcher.wait_for(lambda ms: [m.json()["state"] for m in ms if "/alerts/" in m.topic] == [
            "resolved", "firing"], timeout=30)
        wait_until(lambda: len(_out_of_range(service)) == 3, timeout=10, what="three events in the history")
        newest, resolved, first = _out_of_range(service)
        assert (newest["silenced"], resolved["silenced"], first["silenced"]) == (False, False, True)

        # The history's id acks the first event; the ack is listed with it.
        ack = httpx.post(f"{service.url}/v1/alerts/{first['id']}/ack", json={"by": "ops"}, timeout=10)
        assert ack.status_code == 200 and ack.json()["acked_by"] == "ops", ack.text
        unacked = service.get("/v1/alerts", params={"stream": STREAM, "acked": "false"}).json()
        assert first["id"] not in {a["id"] for a in unacked} and newest["id"] in {a["id"] for a in unacked}
    finally:
        watcher.close()
    log = service.log.read_text()
    assert "silenced until" in log and "(silenced: not notified)" in log
