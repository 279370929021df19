"""``sensorcast serve`` as a real process with real mosquitto and influxd.

- A spike published over MQTT gives exactly one ``firing`` and one ``resolved`` alert
  on the alert topic (and the retained state topic); a clean series gives none.
- The stateful forecast served over REST equals the offline forecast of the same model
  over the same history (numpy twin of the kit model, independent of the service code).
- SIGKILL and restart: state comes back from the checkpoint (no new warm-up), forecasts
  continue exactly, and alerts that were stuck in the outbox are delivered.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.integration.serving import ServeProcess
from tests.mqttwatch import Watcher
from tests.waiting import wait_until
from tools.localservers import Influxd, Mosquitto
from tools.modelkit import KitSpec, KitWeights, NumpyKitModel, write_model

pytestmark = pytest.mark.integration

C = 60 * 10**9  # kit cadence (60 s) in ns
T0 = 1_700_000_000 // 60 * C  # cadence-aligned: each reading fills its bucket exactly
N = 200
SPIKE = 120
SPEC = KitSpec(name="m", mean=(20.0,), std=(3.0,), warmup_steps=10)


def series(spike: bool) -> np.ndarray:
    rng = np.random.default_rng(1)
    v = np.sin(np.arange(N) / 8.0) * 3 + 20 + rng.normal(0, 0.1, N)
    if spike:
        v[SPIKE] += 30
    return v


def offline(weights: KitWeights, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Roll the model's numpy twin over the whole history: the forecast after the last step."""
    model = NumpyKitModel(weights)
    state = np.zeros((1, weights.state_size), np.float32)  # (1, S)
    fc = sc = np.zeros(0, np.float32)
    for v in values:
        fc, sc, state = model.step(np.array([[v]], np.float32), state)  # (1, H, 1) each
    return fc[0], sc[0]  # (H, 1)


class Publisher:
    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:6]}")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, device: str, values: np.ndarray, start: int) -> None:
        infos = [
            self.client.publish(
                f"sensors/{device}/value", orjson.dumps({"ts": T0 + (start + i) * C, "value": float(v)}), qos=1
            )
            for i, v in enumerate(values)
        ]
        for info in infos:
            info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def last_step(svc: ServeProcess, stream: str) -> int | None:
    return svc.last_step(stream)


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, KitWeights]:
    _, weights = write_model(tmp_path / "models", SPEC)
    return tmp_path / "models", weights


@pytest.fixture
def service(tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, models: tuple[Path, KitWeights]) -> Iterator[ServeProcess]:
    db = f"t{uuid.uuid4().hex[:8]}"
    influxd.create_db(db)
    svc = ServeProcess(tmp_path / "svc", mosquitto.url, f"influxdb://127.0.0.1:{influxd.port}/{db}", models[0])
    svc.start()
    yield svc
    svc.kill()


def test_spike_gives_one_firing_one_resolved_and_forecast_matches_offline(
    service: ServeProcess, mosquitto: Mosquitto, models: tuple[Path, KitWeights]
) -> None:
    watch = Watcher(mosquitto.port, "sensorcast/alerts/#", client_id=f"w-{service.tag}")
    pub = Publisher(mosquitto.port)
    clean, spiky = series(False), series(True)
    try:
        # The first reading alone, so warm-up from the store finds no older history and the
        # live state starts at step 0 like the offline roll.
        pub.send("clean", clean[:1], 0)
        pub.send("spiky", spiky[:1], 0)
        wait_until(lambda: last_step(service, "clean/value") == T0 and last_step(service, "spiky/value") == T0,
                   what="first steps")
        assert service.get("/v1/streams/clean/value").json()["warm_up"]["message"] == f"warming up (1 / {SPEC.warmup_steps})"
        pub.send("clean", clean[1:], 1)
        pub.send("spiky", spiky[1:], 1)
        end = T0 + (N - 1) * C
        wait_until(lambda: last_step(service, "clean/value") == end and last_step(service, "spiky/value") == end,
                   what="all steps")

        got = watch.wait_for(lambda m: len(m) >= 2, timeout=10)
        time.sleep(1.0)  # anything more would be a spurious alert
        got = watch.messages
        events = [(m.json()["stream_id"], m.json()["state"]) for m in got]
        assert events == [("spiky/value", "firing"), ("spiky/value", "resolved")]
        firing = got[0].json()
        # M of N = 2 of 3: the spike and the jump back down are both surprising.
        assert firing["ts_ns"] in (T0 + SPIKE * C, T0 + (SPIKE + 1) * C)
        assert not (firing["lower"] <= firing["value"] <= firing["upper"]) and firing["score"] >= 0.99
        assert firing["model"] == "m" and firing["warm"] is True and got[0].topic == "sensorcast/alerts/spiky/value"
        rest = [(a["stream_id"], a["state"]) for a in service.get("/v1/alerts").json()]
        assert rest == [("spiky/value", "resolved"), ("spiky/value", "firing")]  # newest first

        # This stream's topic only: the session broker keeps other tests' retained states.
        state = Watcher(mosquitto.port, "sensorcast/state/spiky/value/anomaly", client_id=f"s-{service.tag}")
        try:
            retained = state.wait_for(lambda m: len(m) >= 1, timeout=5)
            assert retained[0].retain and retained[0].json()["state"] == "resolved"
        finally:
            state.close()

        _, weights = models
        for name, values in (("clean", clean), ("spiky", spiky)):
            fc = service.get(f"/v1/streams/{name}/value/forecast").json()
            mean, scale = offline(weights, values)
            assert np.abs(np.array(fc["mean"], np.float64) - mean).max() <= 1e-4
            assert np.abs(np.array(fc["scale"], np.float64) - scale).max() <= 1e-4
            body = {"model": "m", "values": [[float(v)] for v in values],
                    "timestamps_ns": [T0 + i * C for i in range(N)]}
            stateless = service.post("/v1/predict", json=body).json()
            assert np.abs(np.array(stateless["mean"], np.float64) - mean).max() <= 1e-4
    finally:
        pub.close()
        watch.close()


@pytest.mark.slow
def test_sigkill_restart_restores_state_and_delivers_outbox(
    tmp_path: Path, fresh_mosquitto: Callable[..., Mosquitto], influxd: Influxd, models: tuple[Path, KitWeights]
) -> None:
    broker = fresh_mosquitto()
    db = f"t{uuid.uuid4().hex[:8]}"
    influxd.create_db(db)
    svc = ServeProcess(tmp_path / "svc", broker.url, f"influxdb://127.0.0.1:{influxd.port}/{db}", models[0])
    svc.start()
    values = series(True)
    cut = SPIKE - 10  # history over MQTT up to here; the spike goes in while the broker is down
    try:
        pub = Publisher(broker.port)
        pub.send("spiky", values[:1], 0)
        wait_until(lambda: last_step(svc, "spiky/value") == T0, what="first step")
        pub.send("spiky", values[1:cut], 1)
        pub.close()
        wait_until(lambda: last_step(svc, "spiky/value") == T0 + (cut - 1) * C, what="history")

        # Broker gone: readings still come in over HTTP, alerts pile up in the outbox.
        broker.kill()
        upto = SPIKE + 5
        msgs = [{"topic": "sensors/spiky/value", "payload": {"ts": T0 + i * C, "value": float(values[i])}}
                for i in range(cut, upto)]
        r = svc.post("/v1/readings", json={"messages": msgs})
        assert r.status_code == 202 and r.json()["accepted"] == len(msgs), r.text
        wait_until(lambda: last_step(svc, "spiky/value") == T0 + (upto - 1) * C, what="HTTP readings stepped")
        wait_until(lambda: len(svc.get("/v1/alerts").json()) == 2, what="alerts emitted")
        ready = svc.get("/readyz")
        assert ready.status_code == 503 and not ready.json()["checks"]["alerts"]["ok"]
        assert "4 alert message(s) in the outbox" in ready.json()["checks"]["alerts"]["detail"]
        assert "sensorcast_alert_outbox_messages 4.0" in svc.get("/metrics").text
        time.sleep(1.2)  # > checkpoint interval: the spike is in the checkpoint
        assert svc.kill() == -9

        broker.start()  # same port and data directory
        watch = Watcher(broker.port, "sensorcast/alerts/#", client_id="after-crash")
        svc.start(wait_ready=True)
        try:
            got = watch.wait_for(lambda m: len(m) >= 2, timeout=15)
            assert [m.json()["state"] for m in got[:2]] == ["firing", "resolved"]
            # Restored: no warm-up, the last step is where we were.
            s = svc.get("/v1/streams/spiky/value").json()
            assert s["status"] == "ok" and s["warm_up"]["message"] == "ready"
            assert last_step(svc, "spiky/value") == T0 + (upto - 1) * C
            pub = Publisher(broker.port)
            pub.send("spiky", values[upto:], upto)
            pub.close()
            wait_until(lambda: last_step(svc, "spiky/value") == T0 + (N - 1) * C, what="steps after restart")
            r = svc.get("/v1/streams/spiky/value/forecast")
            assert r.status_code == 200, (r.status_code, r.text, svc.get("/v1/streams/spiky/value").text,
                                          svc.log.read_text()[-3000:])
            fc = r.json()
            mean, _ = offline(models[1], values)
            assert np.abs(np.array(fc["mean"], np.float64) - mean).max() <= 1e-4  # as if never stopped
        finally:
            watch.close()
    finally:
        svc.kill()


def test_sigterm_flushes_checkpoints_and_exits_cleanly(
    service: ServeProcess, mosquitto: Mosquitto
) -> None:
    pub = Publisher(mosquitto.port)
    values = series(False)[:30]
    try:
        pub.send("clean", values[:1], 0)
        wait_until(lambda: last_step(service, "clean/value") == T0, what="first step")
        pub.send("clean", values[1:], 1)
        wait_until(lambda: last_step(service, "clean/value") == T0 + 29 * C, what="steps")
    finally:
        pub.close()
    # uvicorn re-raises the signal once its graceful shutdown is done: exit by SIGTERM.
    assert service.kill(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert list((service.workdir / "state").glob("*.state.npz")), "no checkpoint written on SIGTERM"
    assert "pipeline stopped" in service.log.read_text()
    service.start()
    s = service.get("/v1/streams/clean/value").json()
    assert s["status"] == "ok" and last_step(service, "clean/value") == T0 + 29 * C


def test_headless_roles_run_without_http_and_stop_on_sigterm(
    tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, models: tuple[Path, KitWeights]
) -> None:
    db = f"t{uuid.uuid4().hex[:8]}"
    influxd.create_db(db)
    svc = ServeProcess(tmp_path / "svc", mosquitto.url, f"influxdb://127.0.0.1:{influxd.port}/{db}", models[0],
                       extra_env={"SENSORCAST_ROLES": "ingest,inference"})
    watch = Watcher(mosquitto.port, "sensorcast/alerts/#", client_id=f"h-{svc.tag}")
    try:
        with pytest.raises(RuntimeError, match="not up"):
            svc.start(wait_ready=False, timeout=3)  # no HTTP server in this role set
        assert svc.proc is not None and svc.proc.poll() is None
        wait_until(lambda: "pipeline started (roles: inference,ingest)" in svc.log.read_text(), what="start")
        pub = Publisher(mosquitto.port)
        values = series(True)[: SPIKE + 5]
        pub.send("spiky", values[:1], 0)
        time.sleep(0.5)  # first reading alone (warm-up from an empty store)
        pub.send("spiky", values[1:], 1)
        pub.close()
        got = watch.wait_for(lambda m: len(m) >= 1, timeout=15)
        assert got and got[0].json()["state"] == "firing"  # the whole flow runs headless
        assert svc.kill(signal.SIGTERM) == 0
        assert "pipeline stopped" in svc.log.read_text()
    finally:
        watch.close()
        svc.kill()


def test_ingest_and_inference_as_two_processes(
    tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, models: tuple[Path, KitWeights]
) -> None:
    """The deployment split: one process stores, the other subscribes itself and alerts."""
    db = f"t{uuid.uuid4().hex[:8]}"
    influxd.create_db(db)
    store_url = f"influxdb://127.0.0.1:{influxd.port}/{db}"
    ingest = ServeProcess(tmp_path / "ingest", mosquitto.url, store_url, models[0],
                          extra_env={"SENSORCAST_ROLES": "ingest,api"})
    infer = ServeProcess(tmp_path / "infer", mosquitto.url, store_url, models[0], tag=ingest.tag,
                         extra_env={"SENSORCAST_ROLES": "inference,api"})
    watch = Watcher(mosquitto.port, "sensorcast/alerts/#", client_id=f"split-{ingest.tag}")
    pub = Publisher(mosquitto.port)
    try:
        ingest.start()
        infer.start()  # ready = subscribed to readings, models loaded, alerts connected
        checks = infer.get("/readyz").json()["checks"]
        assert checks["broker"]["ok"] and "store" not in checks
        values = series(True)
        pub.send("spiky", values[:1], 0)
        wait_until(lambda: last_step(infer, "spiky/value") == T0, what="first step")
        pub.send("spiky", values[1:], 1)
        end = T0 + (N - 1) * C
        wait_until(lambda: last_step(infer, "spiky/value") == end, what="all steps in the inference process")
        got = watch.wait_for(lambda m: len(m) >= 2, timeout=10)
        assert [m.json()["state"] for m in got] == ["firing", "resolved"]
        mean, _ = offline(models[1], values)  # every reading reached the engine, in order
        fc = infer.get("/v1/streams/spiky/value/forecast").json()
        assert np.abs(np.array(fc["mean"], np.float64) - mean).max() <= 1e-4
        # The ingest process stored all of them, and runs no engine.
        def stored() -> int:
            r = ingest.get("/v1/points/spiky/value", params={"last": 1000})
            return len(r.json()["values"]) if r.status_code == 200 else -1

        wait_until(lambda: stored() == N, what="all readings stored")
        assert ingest.get("/v1/streams").status_code == 503

        # The inference process is down for 6 buckets (<= max_gap_steps) while the ingest
        # process stores them: on restart it replays them from the store, as if never stopped.
        assert infer.kill(signal.SIGTERM) in (0, -signal.SIGTERM)  # checkpoint at the last step
        more = np.sin(np.arange(N, N + 9) / 8.0) * 3 + 20
        pub.send("spiky", more[:6], N)
        wait_until(lambda: stored() == N + 6, what="readings stored while inference was down")
        infer.start()
        pub.send("spiky", more[6:], N + 6)
        wait_until(lambda: last_step(infer, "spiky/value") == end + 9 * C, what="steps after the restart")
        mean, _ = offline(models[1], np.concatenate([values, more]))
        fc = infer.get("/v1/streams/spiky/value/forecast").json()
        assert np.abs(np.array(fc["mean"], np.float64) - mean).max() <= 1e-4
        assert "caught up 1 restored streams with 6 stored readings" in infer.log.read_text()
    finally:
        pub.close()
        watch.close()
        infer.kill()
        ingest.kill()
