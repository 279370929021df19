"""Publish alerts (QoS 1, through the durable outbox) and forecasts (QoS 0) on MQTT.

Flow of one alert: ``publish_alert`` writes the event and the stream's retained state
message to the outbox (on disk), then hands them to paho. paho sends them, re-sends them
itself after a reconnect, and reports the broker's PUBACK in ``on_publish``; only then is
the outbox row deleted. On start, rows left by a previous process are sent again.

At most ``_MAX_HANDED`` messages are with paho at once: its message ids are 16-bit, and a
broker that is away for long must not make us hold the whole outbox in memory twice.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from service.alerts.outbox import Outbox
from service.alerts.payload import alert_payload, forecast_payload, topic_for
from service.config import AlertsSettings, MqttSettings
from service.mqtt import make_client
from service.records import Alert, Forecast

log = logging.getLogger(__name__)

_MAX_HANDED = 10_000  # well under paho's 65,535 message ids
_SYNC_EVERY_S = 1.0  # outbox fsync period: bounds what a power cut can lose
_OK = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)  # NO_CONN: paho keeps it and sends on connect


class AlertPublisher:
    """One paho client of its own (client id ``alerts.client_id``), owned by the pipeline."""

    def __init__(self, mqtt_settings: MqttSettings, settings: AlertsSettings) -> None:
        self.settings = settings
        self.outbox = Outbox(settings.outbox_dir)
        self._client, self._addr = make_client(mqtt_settings, settings.client_id)
        self._keepalive = mqtt_settings.keepalive_s
        self._client.max_inflight_messages_set(1000)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._lock = threading.Lock()  # guards the maps below; never held while calling paho
        self._drain_lock = threading.Lock()  # one drainer at a time keeps outbox order
        self._handed: dict[int, int] = {}  # paho mid -> outbox id
        self._early: set[int] = set()  # PUBACKs that beat the mid bookkeeping
        self._acked: list[int] = []  # outbox ids to delete (done by the worker, off paho's thread)
        self._last_handed = 0  # highest outbox id given to paho in this process
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self.published = 0  # acknowledged by the broker
        # Forecasts get a client of their own: QoS 0 publishes also fire on_publish, and
        # their message ids must never be mistaken for an alert's PUBACK.
        self._fc_client: mqtt.Client | None = None
        if settings.forecast_topic:
            self._fc_client, _ = make_client(mqtt_settings, settings.client_id + "-forecasts")

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        for client in (self._client, self._fc_client):
            if client is not None:
                client.connect_async(self._addr.host, self._addr.port, keepalive=self._keepalive)
                client.loop_start()
        self._worker = threading.Thread(target=self._run, name="alerts-outbox", daemon=True)
        self._worker.start()
        self._wake.set()  # send what a previous process left behind

    def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Wait up to ``flush_timeout_s`` for the broker to take what is pending, then stop.

        Whatever is still unacknowledged stays in the outbox for the next start.
        """
        if self._worker is not None:
            waited = 0.0
            while waited < flush_timeout_s and self._connected.is_set() and self.pending() > 0:
                self._wake.set()
                self._stopping.wait(0.05)
                waited += 0.05
            self._stopping.set()
            self._wake.set()
            self._worker.join(timeout=5)
            self._worker = None
        for client in (self._client, self._fc_client):
            if client is not None:
                client.disconnect()
                client.loop_stop()
        self._flush_acks()
        self.outbox.sync()
        self.outbox.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def pending(self) -> int:
        """Messages written to the outbox and not yet acknowledged by the broker."""
        with self._lock:
            queued_acks = len(self._acked)
        return len(self.outbox) - queued_acks

    # -- what the pipeline calls -------------------------------------------------
    def publish_alert(self, alert: Alert, event: bool = True) -> None:
        """Make the alert durable, then send it and the stream's retained state; ``event=False``
        (a silenced stream): the retained state only."""
        body = alert_payload(alert)
        s = self.settings
        if event:
            self.outbox.put(topic_for(s.topic, alert.device, alert.quantity, alert.stream_id, alert.check), body, 1)
        if s.state_topic:
            state_topic = topic_for(s.state_topic, alert.device, alert.quantity, alert.stream_id, alert.check)
            self.outbox.put(state_topic, body, 1, retain=True)
        self._drain()

    def publish_forecast(self, fc: Forecast, device: str, quantity: str) -> None:
        """Best effort (QoS 0, not in the outbox): a newer forecast replaces a lost one."""
        if self._fc_client is None or not self.settings.forecast_topic:
            return
        if not self._fc_client.is_connected():
            return
        topic = topic_for(self.settings.forecast_topic, device, quantity, fc.stream_id)
        info = self._fc_client.publish(topic, forecast_payload(fc), qos=0)
        if info.rc not in _OK:
            log.debug("forecast publish refused by paho: %s", mqtt.error_string(info.rc))

    # -- internals -----------------------------------------------------------------
    def _drain(self) -> None:
        """Hand outbox rows paho does not have yet to paho, oldest first."""
        with self._drain_lock:
            with self._lock:
                room = _MAX_HANDED - len(self._handed)
                after = self._last_handed
            if room <= 0:
                return
            for entry in self.outbox.pending(after, min(room, 1000)):
                info = self._client.publish(entry.topic, entry.payload, qos=entry.qos, retain=entry.retain)
                if info.rc not in _OK:
                    # e.g. paho's queue is full: leave it in the outbox, retry on the next wake.
                    log.warning("alert publish refused by paho (%s); will retry", mqtt.error_string(info.rc))
                    return
                with self._lock:
                    self._last_handed = entry.id
                    if info.mid in self._early:
                        self._early.discard(info.mid)
                        self._acked.append(entry.id)
                        self.published += 1
                    else:
                        self._handed[info.mid] = entry.id

    def _flush_acks(self) -> None:
        with self._lock:
            done, self._acked = self._acked, []
        for entry_id in done:
            self.outbox.ack(entry_id)

    def _run(self) -> None:
        next_sync = time.monotonic() + _SYNC_EVERY_S
        while not self._stopping.is_set():
            self._wake.wait(_SYNC_EVERY_S)
            self._wake.clear()
            try:
                self._flush_acks()
                if self._connected.is_set():
                    self._drain()
                if time.monotonic() >= next_sync:
                    next_sync = time.monotonic() + _SYNC_EVERY_S
                    self.outbox.sync()
            except Exception:  # the worker must outlive one bad round (disk full, ...)
                log.exception("alert outbox worker round failed; retrying")
                self._stopping.wait(1.0)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            log.info("alerts: connected to broker %s:%d", self._addr.host, self._addr.port)
            self._connected.set()
            self._wake.set()
        else:
            log.warning("alerts: broker refused connection: %s", reason)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self._connected.is_set() and not self._stopping.is_set():
            log.warning("alerts: disconnected from broker (%s); paho will reconnect", reason)
        self._connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        # Runs on paho's thread while it holds its own lock: only bookkeeping here.
        with self._lock:
            entry_id = self._handed.pop(mid, None)
            if entry_id is None:
                self._early.add(mid)
            else:
                self._acked.append(entry_id)
                self.published += 1
        self._wake.set()
