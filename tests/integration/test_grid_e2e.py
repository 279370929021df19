"""A sensor grid end to end: a grid-rowlstm model trained on simulated 8x8 frames, a real
``sensorcast serve`` and mosquitto, the simulator's grid publisher sending one message per
pixel (the default topic template). The engine serves the device as one multivariate
stream: status, forecast for all 64 pixels, and GET /v1/models declares the grid."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

pytest.importorskip("torch")

from tests.integration.serving import ServeProcess
from tests.waiting import wait_until
from tools.localservers import Mosquitto
from tools.sim.grid import GridPublisher, GridSpec, frames

pytestmark = pytest.mark.integration
C = 60 * 10**9


def _train(models: Path) -> None:
    import numpy as np

    from training.config import Config, DataConfig, ModelConfig, TrainConfig
    from training.data import Dataset, Series
    from training.export import export
    from training.trainer import assess, train

    spec = GridSpec()
    ts, v = frames(spec, 1_700_000_000 * 10**9, 400, seed=0)
    ds = Dataset(tuple(spec.names), 60.0, (Series("ir01", ts, v.astype(np.float32)),), "sim")
    cfg = Config(name="irgrid", version="1", data=DataConfig(source="sim", time_features=(), serve=("ir*",)),
                 model=ModelConfig(cell="grid-rowlstm", grid=(8, 8), hidden=8, horizon=4, dropout=0.0),
                 train=TrainConfig(epochs=1, batch=4, chunk=8, strand=32, progress=False))
    t = train(cfg, ds)
    export(t, models, {"val": assess(t, "val")})


def test_a_grid_device_is_served_as_one_stream(tmp_path: Path, mosquitto: Mosquitto) -> None:
    _train(tmp_path / "models")
    svc = ServeProcess(tmp_path / "svc", mosquitto.url, f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "models")
    svc.start()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"grid-{uuid.uuid4().hex[:6]}")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        infos: list[mqtt.MQTTMessageInfo] = []

        def send(topic: str, payload: bytes) -> bool:
            infos.append(client.publish(topic, payload, qos=1))
            return True

        start = (time.time_ns() // C - 30) * C  # 30 one-minute frames of history, up to now
        pub = GridPublisher([GridSpec(dead_after_step=20)], start, seed=1, send=send)
        assert pub.step(start + 29 * C) == 30 and len(infos) == 30 * 64 - 10  # r2c5 silent from frame 20
        for info in infos:
            info.wait_for_publish(10)
        wait_until(lambda: svc.get("/v1/streams/ir01").status_code == 200
                   and svc.get("/v1/streams/ir01").json()["status"] in ("ok", "firing"), timeout=60,
                   what="the grid device served and warm")
        status = svc.get("/v1/streams/ir01").json()
        assert status["quantity"] == "*" and status["model"] == "irgrid"
        fc = svc.get("/v1/streams/ir01/forecast").json()
        assert fc["features"] == GridSpec().names and len(fc["mean"]) == 4 and len(fc["mean"][0]) == 64
        models = svc.get("/v1/models").json()
        assert [(m["name"], m["cell"], m["grid"]) for m in models] == [("irgrid", "grid-rowlstm", [8, 8])]
        # The pixels' readings are stored per quantity (the dashboard's heat map reads them).
        assert svc.get("/v1/points/ir01/r7c7", params={"last": 1}).json()["values"]
    finally:
        client.disconnect()
        client.loop_stop()
        svc.kill()
