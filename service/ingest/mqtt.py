"""The MQTT side of intake: a paho-mqtt 2.x subscriber that decodes and hands readings on.

Two uses:

* the ingester's (``writer`` given): MQTT 5, fixed client id, ``clean_start=False`` on
  every connect and a session expiry, so the broker queues readings while we are away.
  ``manual_ack=True``: a message is acknowledged only when the writer has made its
  readings durable. The ack token carries the connection generation; a token from before
  a reconnect is not sent (the packet id may belong to another message by then), the
  broker redelivers instead, and the duplicate overwrites the same point. The blocking
  ``put`` into the writer's bounded queue is the backpressure: paho stops reading the
  socket and the broker holds.
* an inference-only process's (no writer): a clean session, acknowledged on receipt. It
  keeps no broker-side backlog: after a restart the engine resumes from its checkpoint
  and warms up from the store, which the ingest process kept filling.

Either way decoded readings go to the ``live`` sinks at once, from paho's thread: the
engine sees a reading before the store write, so the database's latency is never part
of an alert's.

No exception from one message may leave ``_on_message``: paho would re-raise it out of
its loop and the network thread would end (intake stops, unnoticed, and the unacked
message comes back after every restart: a poison message). Anything raised becomes a
refusal with reason ``internal`` and the message is acknowledged like any refused one.

A persistent session the broker no longer has on a reconnect (``session present: 0``
after we had one) means what it queued for us meanwhile may be gone: a WARNING, the
counter ``sensorcast_mqtt_sessions_lost_total`` and a ``/readyz`` detail.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from service.config import MqttSettings
from service.errors import ConfigError
from service.ingest.decode import Decoder, Refusal
from service.ingest.refusals import RefusalReporter
from service.ingest.writer import AckToken, BatchWriter, Item, Sink
from service.metrics import Metrics
from service.mqtt import connect_properties, make_client
from service.mqtt.leanclient import LeanClient
from service.records import Reading

log = logging.getLogger(__name__)


class MqttSource:
    """Subscribes and decodes; feeds the live sinks, queues for the writer (if any) and acks."""

    def __init__(
        self,
        settings: MqttSettings,
        decoder: Decoder,
        writer: BatchWriter | None,
        reporter: RefusalReporter,
        qos: int,
        live: Sequence[Sink] = (),
        client_id: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.decoder = decoder
        self.writer = writer
        self.reporter = reporter
        self.qos = qos
        self.live = list(live)
        self.persistent = writer is not None
        # Only the ingester shares: an inference process must see every reading it serves.
        group = decoder.settings.share_group if self.persistent else None
        if group is not None and (not group or any(c in group for c in "/+#")):
            raise ConfigError(f"ingest.share_group must be a plain name (no / + #), found {group!r}")
        # A shared subscription: the broker hands each message to one member of the group.
        self.subscription = (
            f"$share/{group}/{decoder.template.subscription}" if group else decoder.template.subscription
        )
        self.client, self.addr = make_client(
            settings, client_id or settings.client_id, protocol=settings.protocol,
            persistent=self.persistent, manual_ack=self.persistent, lean=True,
        )
        self._props = connect_properties(settings, self.persistent)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self._gen = 0
        self._closing = False
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.ack_errors = 0
        self.acked = 0  # messages acknowledged to the broker (tests and status)
        self._had_session = False  # a persistent session existed on the broker (this process)
        self.sessions_lost = 0
        self.last_session_lost: float | None = None  # time.time() of the last one
        self._sessions_lost_metric = metrics.mqtt_sessions_lost if metrics is not None else None

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self.settings.protocol == "5":
            self.client.connect_async(
                self.addr.host, self.addr.port, self.settings.keepalive_s,
                clean_start=not self.persistent, properties=self._props,
            )
        else:  # paho refuses clean_start and properties on 3.1.1
            self.client.connect_async(self.addr.host, self.addr.port, self.settings.keepalive_s)
        rc = self.client.loop_start()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConfigError(f"MQTT network loop did not start: {paho.error_string(rc)}")

    def loop_alive(self) -> bool:
        """paho's network thread is running (the watchdog's intake check)."""
        thread = self.client._thread
        return thread is not None and thread.is_alive()

    def close_intake(self) -> None:
        """New messages are left unacknowledged (the broker keeps them for next time)."""
        self._closing = True

    def stop(self) -> None:
        self._closing = True
        # Give paho's loop a moment to send the acks the writer's last flush queued.
        time.sleep(0.2)
        self.client.disconnect()
        self.client.loop_stop()
        # paho's loop_stop leaves its socket and wake-up socket pair open until garbage
        # collection (a ResourceWarning then); the loop has ended, so close them now.
        self.client._reset_sockets()
        self.connected.clear()

    # --- callbacks (paho's thread) -------------------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.error("MQTT connect to %s:%d refused: %s", self.addr.host, self.addr.port, rc)
            return
        self._gen += 1
        self.connected.set()
        log.info(
            "MQTT connected to %s:%d (session present: %s); subscribing to %r",
            self.addr.host, self.addr.port, flags.session_present, self.subscription,
        )
        if self.persistent:
            if self._had_session and not flags.session_present:
                self._session_lost()
            self._had_session = True
        result, _mid = client.subscribe(self.subscription, qos=self.qos)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.error("MQTT subscribe failed: %s", paho.error_string(result))

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        for code in codes:
            if code.is_failure:
                log.error("MQTT subscription to %r refused: %s", self.subscription, code)
                return
        log.info("MQTT subscribed to %r", self.subscription)
        self.subscribed.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if not self._closing:
            log.warning("MQTT disconnected (%s); reconnecting with backoff", rc)

    def _session_lost(self) -> None:
        self.sessions_lost += 1
        self.last_session_lost = time.time()
        if self._sessions_lost_metric is not None:
            self._sessions_lost_metric.inc()
        log.warning(
            "MQTT broker %s:%d no longer has our persistent session (client id %r): readings it queued for us "
            "while we were away may be gone. Check the broker's persistence (persistence true, a short "
            "autosave_interval, its data volume) and whether it was restarted or crashed",
            self.addr.host, self.addr.port, self.client._client_id.decode(errors="replace"),
        )

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if self._closing:
            return  # not acknowledged: redelivered to the next session
        try:
            self._take(msg)
        except Exception as e:  # whatever it was, the loop must go on (see the module doc)
            self._refuse_internal(msg, e)

    def _refuse_internal(self, msg: paho.MQTTMessage, exc: Exception) -> None:
        payload = cast(bytes, msg.payload)
        topic = msg._topic.decode("utf-8", "replace")
        try:
            self.reporter.internal("mqtt", topic, payload, exc)
        except Exception:
            log.exception("refused (internal) from topic %r; reporting it failed too", topic[:200])
        try:
            self._queue_ack(msg)  # in order with the writer's acks, like any refused message
        except Exception:
            log.exception("queueing the ack of a refused message failed; acknowledging at once")
            try:
                self._ack_now(msg)
            except Exception:
                log.exception("acknowledging a refused message failed; the broker will redeliver it")

    def _take(self, msg: paho.MQTTMessage) -> None:
        received = time.time_ns()
        payload = cast(bytes, msg.payload)  # paho stores the payload as bytes
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            self.reporter.report("mqtt", repr(msg._topic[:200]), payload, [Refusal("bad_encoding", "topic is not UTF-8")])
            self._queue_ack(msg)
            return
        result = self.decoder.decode(topic, payload, received)
        if result.refusals:
            self.reporter.report("mqtt", topic, payload, result.refusals)
        if result.readings:
            for sink in self.live:
                try:
                    sink(result.readings)
                except Exception:
                    log.exception("live sink %r failed on %d readings", sink, len(result.readings))
        self._queue(msg, result.readings)

    def _queue(self, msg: paho.MQTTMessage, readings: list[Reading]) -> None:
        if self.writer is not None:
            token: AckToken | None = (msg.mid, msg.qos, self._gen) if msg.qos > 0 else None
            # Even a fully refused message goes through the queue so acks stay in order.
            self.writer.put(Item(readings, token))
        # else: paho acknowledges when this callback returns (manual_ack is off)

    def _queue_ack(self, msg: paho.MQTTMessage) -> None:
        self._queue(msg, [])

    def _ack_now(self, msg: paho.MQTTMessage) -> None:
        if msg.qos > 0 and self.persistent:
            self.ack([(msg.mid, msg.qos, self._gen)])

    # --- our own publishes ----------------------------------------------------------------
    def publish_dead_letter(self, topic: str, body: bytes) -> None:
        """A refused message's report, QoS 1 (paho queues it while reconnecting)."""
        info = self.client.publish(topic, body, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("dead-letter publish to %r failed: rc %s", topic, info.rc)

    # --- acknowledgements (writer thread) ------------------------------------------------
    def ack(self, tokens: list[AckToken]) -> None:
        gen = self._gen
        current = [(mid, qos) for mid, qos, g in tokens if g == gen]  # older: the broker redelivers
        if isinstance(self.client, LeanClient) and all(qos == 1 for _, qos in current):
            rc = self.client.ack_many([mid for mid, _ in current])
            self._count_acks(rc, len(current), current[0][0] if current else 0)
            return
        for mid, qos in current:
            self._count_acks(self.client.ack(mid, qos), 1, mid)

    def _count_acks(self, rc: MQTTErrorCode, n: int, mid: int) -> None:
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.acked += n
            return
        self.ack_errors += n
        if self.ack_errors <= 10 or self.ack_errors % 10_000 < n:
            log.warning("MQTT ack of %d message(s) from mid %d failed: %s (redelivery will follow)",
                        n, mid, paho.error_string(rc))
