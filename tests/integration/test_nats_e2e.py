"""A device publishing MQTT to NATS's MQTT listener is stored and scored: one real `sensorcast serve`
(roles ingest,inference,api) on a real 3-node cluster; its alert reaches an MQTT subscriber on
another node's listener."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from service.config import StoreSettings
from service.records import StreamKey
from service.store import open_store
from tests.integration.serving import ServeProcess
from tests.waiting import wait_until
from tools.localservers import NatsCluster
from tools.modelkit import KitSpec, write_model

C = 60 * 10**9  # the kit model's cadence (60 s) in ns
T0 = 1_700_000_000 // 60 * C
STEPS = 80
DEVICES = ("dev1", "dev2", "dev3")
SPIKE = ("dev2", 50)  # one reading far off: an anomaly fires, then resolves


def test_mqtt_device_through_nats_is_stored_and_scored(fresh_nats: Callable[..., NatsCluster],
                                                       tmp_path: Path) -> None:
    cluster = fresh_nats(nodes=3, partitions=4)
    models = tmp_path / "models"
    write_model(models, KitSpec(name="m", mean=(20.0,), std=(3.0,), warmup_steps=10))
    db = tmp_path / "readings.db"
    svc = ServeProcess(tmp_path / "svc", "mqtt://127.0.0.1:9", f"sqlite:///{db}", models, extra_env={
        "SENSORCAST_ROLES": "ingest,inference,api",
        "SENSORCAST_NATS__URL": cluster.url,
        "SENSORCAST_NATS__STREAM": "E2E",
        "SENSORCAST_NATS__PARTITIONS": "4",
        "SENSORCAST_NATS__REPLICAS": "3",
    })
    alerts: list[tuple[str, dict[str, object]]] = []
    subscribed = threading.Event()
    watch = paho.Client(CallbackAPIVersion.VERSION2, client_id="e2e-alerts", protocol=paho.MQTTv311)
    watch.on_message = lambda c, u, m: alerts.append((m.topic, orjson.loads(m.payload)))
    watch.on_subscribe = lambda *a: subscribed.set()
    watch.on_connect = lambda c, *a: c.subscribe("sensorcast/alerts/#", qos=1)
    device = paho.Client(CallbackAPIVersion.VERSION2, client_id="e2e-device", protocol=paho.MQTTv311)
    rng = np.random.default_rng(3)
    sent = {}
    try:
        svc.start(timeout=120)
        watch.connect("127.0.0.1", cluster.nodes[2].mqtt_port)
        watch.loop_start()
        assert subscribed.wait(90)
        device.connect("127.0.0.1", cluster.nodes[0].mqtt_port)
        device.loop_start()
        for i in range(STEPS):
            for d, dev in enumerate(DEVICES):
                v = float(np.sin(i / 8.0 + d) * 3 + 20 + rng.normal(0, 0.1)) + (30.0 if (dev, i) == SPIKE else 0.0)
                ts = T0 + i * C
                sent[(dev, ts)] = v
                info = device.publish(f"sensors/{dev}/value", orjson.dumps({"ts": ts, "value": v}), qos=1)
                info.wait_for_publish(30)

        def scored() -> bool:
            streams = {s["id"]: s for s in svc.get("/v1/streams").json()}
            return all(f"{dev}/value" in streams for dev in DEVICES) and all(
                svc.get(f"/v1/streams/{dev}/value/forecast").status_code == 200 for dev in DEVICES)

        wait_until(scored, timeout=60, what="every device's stream served, with a forecast")
        wait_until(lambda: any(a["state"] == "resolved" for _, a in alerts), timeout=60,
                   what="the spike's alert, fired and resolved, at the MQTT subscriber")
        fc = svc.get("/v1/streams/dev1/value/forecast").json()
        assert len(fc["mean"]) == 4 and all(np.isfinite(fc["mean"][0]))
    finally:
        for c in (device, watch):
            c.disconnect()
            c.loop_stop()
        svc.kill(signal.SIGTERM)
    fired = [(t, a["stream_id"], a["state"]) for t, a in alerts]
    assert fired[0] == ("sensorcast/alerts/dev2/value", "dev2/value", "firing"), fired
    assert fired.count(fired[0]) == 1  # once
    # Stored: every reading, once (the writer's store is the serve process's own).
    store = open_store(StoreSettings(url=f"sqlite:///{db}"))
    try:
        got = store.read_last_many([StreamKey(dev, "value") for dev in DEVICES], 10_000)
    finally:
        store.close()
    stored = {(r.stream.device, r.ts_ns): r.value for rs in got.values() for r in rs}
    assert stored == sent
