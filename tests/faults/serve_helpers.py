"""Helpers for fault tests on the real ``sensorcast serve`` process."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from service.records import Reading, StreamKey
from tools.bench.serveproc import ServeProcess, stack_env
from tools.localservers import free_port
from tools.modelkit import KitSpec, write_model

CADENCE_NS = 10**9
KIT = KitSpec(name="kit", version="1", cadence_s=1.0, warmup_steps=3, features=("temp",))


def kit_models(root: Path, spec: KitSpec = KIT) -> Path:
    write_model(root, spec)
    return root


def series(streams: int, steps: int, start_ns: int, first_step: int = 0) -> list[Reading]:
    """One reading per stream per second (the kit model's cadence), step-major order."""
    out = []
    for k in range(first_step, first_step + steps):
        for s in range(streams):
            v = 20.0 + s + 0.5 * ((k * 7 + s) % 11) / 11
            out.append(Reading(StreamKey(f"dev{s:03d}", "temp"), start_ns + k * CADENCE_NS, round(v, 6)))
    return out


@contextmanager
def serve(workdir: Path, mqtt_url: str, store_url: str, models: Path, **env: str) -> Iterator[ServeProcess]:
    workdir.mkdir(parents=True, exist_ok=True)
    sp = ServeProcess(stack_env(workdir, mqtt_url, store_url, models, free_port(), **env), workdir / "serve.log")
    sp.start()
    try:
        yield sp
    finally:
        sp.close()


def restored_counts(log_text: str) -> list[int]:
    return [int(n) for n in re.findall(r"restored (\d+) streams from checkpoints", log_text)]


class Subscriber:
    """Collects every message on ``topic`` (QoS 1) with a persistent session."""

    def __init__(self, port: int, topic: str, client_id: str) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
                                  clean_session=False)
        self.client.reconnect_delay_set(1, 2)
        self.subscribed = threading.Event()
        self.topic = topic

        def on_connect(c: paho.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
            c.subscribe(topic, qos=1)

        def on_subscribe(c: paho.Client, u: Any, mid: int, codes: Any, p: Any) -> None:
            self.subscribed.set()

        def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
            with self._lock:
                self.messages.append((msg.topic, orjson.loads(msg.payload)))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def got(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
