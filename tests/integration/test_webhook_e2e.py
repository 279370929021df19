"""Webhooks end to end: real mosquitto, a real ``sensorcast serve``, a real HTTP receiver on 127.0.0.1.

- An excursion's firing and resolved events reach the receiver, signed, with the same
  fields as the MQTT alert and in order.
- An event queued while the receiver is down survives a SIGKILL of ``serve`` and is
  delivered by the restarted process once the receiver is back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from service.alerts.webhook import verify
from tests.integration.serving import ServeProcess
from tests.integration.test_anomaly_e2e import MODELS, WARM, Publisher, sine
from tests.mqttwatch import Watcher
from tests.waiting import wait_until
from tests.webhookreceiver import Receiver
from tools.localservers import Mosquitto, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = b"e2e-webhook-key"
# Explicit: these tests are about delivery, not about which model a stream gets by default.
BINDING = orjson.dumps([{"model": "demo", "device": "*", "quantity": "value"}]).decode()


def serve(tmp_path: Path, mqtt_url: str, hook_url: str) -> ServeProcess:
    key = tmp_path / "webhook.key"
    key.write_bytes(SECRET)
    return ServeProcess(tmp_path / "svc", mqtt_url, f"sqlite:///{tmp_path / 'readings.db'}", MODELS, extra_env={
        "SENSORCAST_ANOMALY__COOLDOWN_S": "0",
        "SENSORCAST_MODELS__BINDINGS": BINDING,
        "SENSORCAST_WEBHOOKS__URLS": orjson.dumps([hook_url]).decode(),
        "SENSORCAST_WEBHOOKS__SECRET_FILE": str(key),
        "SENSORCAST_WEBHOOKS__OUTBOX_PATH": str(tmp_path / "svc" / "webhooks.sqlite"),
        "SENSORCAST_WEBHOOKS__BACKOFF_S": "0.1",
        "SENSORCAST_WEBHOOKS__BACKOFF_MAX_S": "0.5",
    })


@pytest.fixture
def pub(mosquitto: Mosquitto) -> Iterator[Publisher]:
    p = Publisher(mosquitto.port, client_id=f"webhook-pub-{uuid.uuid4().hex[:6]}")
    yield p
    p.close()


def excursion() -> np.ndarray:
    """The anomaly e2e's excursion: +60 for 6 readings after warm-up (one firing, one resolved)."""
    v = sine(WARM + 40)
    v[WARM + 10 : WARM + 16] += 60
    return v


def metric(svc: ServeProcess, name: str) -> float:
    for line in svc.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_a_fired_alert_reaches_the_webhook_signed_like_the_mqtt_event(tmp_path: Path, mosquitto: Mosquitto,
                                                                      pub: Publisher) -> None:
    receiver = Receiver()
    svc = serve(tmp_path, mosquitto.url, receiver.url("/sensorcast"))
    try:
        svc.start()
        watch = Watcher(mosquitto.port, "sensorcast/alerts/#", client_id=f"w-{svc.tag}")
        pub.send("hooked", excursion(), 0)
        wait_until(lambda: len(receiver.requests) >= 2, what="firing and resolved webhooks", timeout=30)
        got = [r.json() for r in receiver.requests]
        assert [(e["stream_id"], e["check"], e["state"]) for e in got[:2]] == [
            ("hooked/value", "anomaly", "firing"), ("hooked/value", "anomaly", "resolved")]
        for r in receiver.requests:
            h = r.headers
            assert verify(SECRET, h["x-sensorcast-timestamp"], r.body, h["x-sensorcast-signature"])
            assert h["x-sensorcast-event"] == r.json()["event_id"]
        # The same event as on MQTT: every field of the MQTT payload, the same values.
        wait_until(lambda: len(watch.messages) >= 2, what="the MQTT events")
        mqtt_firing = next(m.json() for m in watch.messages if m.json()["state"] == "firing")
        assert {k: got[0][k] for k in mqtt_firing} == mqtt_firing
        wait_until(lambda: metric(svc, "sensorcast_webhooks_sent_total") >= 2, what="counted")
        assert metric(svc, "sensorcast_webhooks_pending") == 0
    finally:
        svc.kill()
        receiver.close()


def test_an_undelivered_webhook_survives_sigkill_and_is_sent_by_the_next_process(
        tmp_path: Path, mosquitto: Mosquitto, pub: Publisher) -> None:
    port = free_port()  # the receiver is down: nothing listens yet
    svc = serve(tmp_path, mosquitto.url, f"http://127.0.0.1:{port}/sensorcast")
    receiver: Receiver | None = None
    try:
        svc.start()
        pub.send("crash", excursion(), 0)
        wait_until(lambda: metric(svc, "sensorcast_webhooks_pending") >= 2 and
                   metric(svc, "sensorcast_webhooks_retries_total") >= 1, what="queued and failing", timeout=30)
        svc.kill()  # SIGKILL: no orderly stop, the outbox file is all that is left
        receiver = Receiver(port=port)
        svc.start()
        rec = receiver
        wait_until(lambda: len(rec.requests) >= 2, what="the events after the restart", timeout=30)
        states = [(r.json()["stream_id"], r.json()["state"]) for r in rec.requests]
        assert states[:2] == [("crash/value", "firing"), ("crash/value", "resolved")]
        assert int(rec.requests[0].headers["x-sensorcast-attempt"]) >= 2  # its failed attempts were kept
        wait_until(lambda: metric(svc, "sensorcast_webhooks_pending") == 0, what="outbox emptied")
    finally:
        svc.kill()
        if receiver is not None:
            receiver.close()
