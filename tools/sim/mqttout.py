"""Publish readings to MQTT for the simulator and replay: QoS 1, bounded in flight.

paho message ids are 16-bit: with more than 65,535 unacknowledged QoS 1 publishes
``publish()`` fails and sends nothing. So ``send`` blocks while ``max_pending``
publishes wait for their PUBACK, and every return code is checked; a publish paho
refuses is counted in ``refused``, never silently lost.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import paho.mqtt.client as mqtt

from service.config import MqttSettings
from service.errors import SensorcastError
from service.mqtt import make_client

TsFormat = Literal["ns", "ms", "s", "iso"]
TS_FORMATS: tuple[TsFormat, ...] = ("ns", "ms", "s", "iso")


def encode_ts(ts_ns: int, fmt: TsFormat) -> int | float | str:
    """A timestamp as the payload carries it: epoch ns / ms / s, or RFC 3339 UTC."""
    if fmt == "ns":
        return ts_ns
    if fmt == "ms":
        return ts_ns // 1_000_000
    if fmt == "s":
        return ts_ns / 1e9
    dt = datetime.fromtimestamp(ts_ns // 1000 / 1e6, tz=UTC)
    return dt.isoformat(timespec="microseconds").replace("+00:00", "Z")


def reading_payload(ts_ns: int, value: float, fmt: TsFormat = "ms") -> bytes:
    """``{"ts": ..., "value": ...}``: the payload the ingester decodes."""
    return orjson.dumps({"ts": encode_ts(ts_ns, fmt), "value": value})


class PublishError(SensorcastError):
    """The broker could not be reached or did not acknowledge in time."""


@dataclass
class PublishStats:
    sent: int = 0  # handed to paho
    acked: int = 0  # PUBACK received (QoS 1) or written (QoS 0)
    refused: int = 0  # paho refused the publish (counted, logged by the caller)


class MqttOut:
    """One paho client that publishes with a bounded number of unacknowledged messages."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        qos: int = 1,
        max_pending: int = 5_000,
    ) -> None:
        self.qos = qos
        self.max_pending = max_pending
        self.stats = PublishStats()
        self._client, self._addr = make_client(settings, client_id)
        self._keepalive = settings.keepalive_s
        # Broker default in-flight window is small; a wider one keeps QoS 1 throughput up.
        self._client.max_inflight_messages_set(min(max_pending, 1000))
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_publish = self._on_publish
        self._connected = threading.Event()
        self._cond = threading.Condition()
        self._pending = 0
        self._refusal: str | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect and wait until the broker accepted us."""
        try:
            self._client.connect_async(self._addr.host, self._addr.port, keepalive=self._keepalive)
        except (OSError, ValueError) as e:
            raise PublishError(f"cannot connect to {self._addr.host}:{self._addr.port}: {e}") from e
        self._client.loop_start()
        deadline = time.monotonic() + timeout_s
        while not self._connected.wait(0.05):
            if self._refusal is not None or time.monotonic() > deadline:
                self._client.loop_stop()
                why = f"refused us: {self._refusal}" if self._refusal else f"did not accept us within {timeout_s}s"
                raise PublishError(f"broker {self._addr.host}:{self._addr.port} {why}")

    def send(self, topic: str, payload: bytes) -> bool:
        """Publish one message; blocks while ``max_pending`` wait for acknowledgement."""
        with self._cond:
            while self._pending >= self.max_pending:
                self._cond.wait(0.5)
            self._pending += 1
        info = self._client.publish(topic, payload, qos=self.qos)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # NO_CONN is fine: paho keeps QoS 1 messages and sends them on reconnect.
            with self._cond:
                self._pending -= 1
            self.stats.refused += 1
            return False
        self.stats.sent += 1
        return True

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every publish is acknowledged; False when time ran out."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self, flush_timeout_s: float = 5.0) -> bool:
        """Flush, disconnect, stop paho's thread; True when everything was acknowledged."""
        flushed = self.flush(flush_timeout_s) if self._connected.is_set() else self._pending == 0
        self._client.disconnect()
        self._client.loop_stop()
        return flushed

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._refusal = str(reason)
        else:
            self._refusal = None
            self._connected.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._refusal = "connection failed (is the broker running and the URL right?)"

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._cond:
            self._pending = max(0, self._pending - 1)
            self.stats.acked += 1
            self._cond.notify_all()
