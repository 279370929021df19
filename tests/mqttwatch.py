"""A test subscriber that collects messages from a real broker, and a QoS 1 publisher (integration tests)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float  # time.monotonic() of arrival

    def json(self) -> Any:
        return orjson.loads(self.payload)


class Watcher:
    """Subscribes to ``topic`` (QoS 1) and records everything, with arrival times."""

    def __init__(self, port: int, topic: str, client_id: str = "test-watcher") -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "test subscriber did not subscribe"

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic()))
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[list[Received]], bool], timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_all(port: int, msgs: Iterable[tuple[str, bytes]]) -> None:
    """Publish ``(topic, payload)`` pairs at QoS 1 to the broker on 127.0.0.1:``port`` and
    wait until the broker acknowledged every one."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:6]}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for info in [client.publish(topic, body, qos=1) for topic, body in msgs]:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
