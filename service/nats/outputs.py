"""Alerts and forecasts out to NATS: the same payloads as the MQTT path (service/alerts/payload.py).

* An alert event goes to JetStream (the alerts stream, ``<stream>_ALERTS``, capturing
  ``sc.<stream>.`` + the alert subject) with the header ``Nats-Msg-Id`` made from (stream id,
  check, state, reading time): a partition's new owner that replays readings after a failover
  fires the same alert again with the same id, and the stream's duplicate window drops it.
  When the stream took it as new, it is also published (core NATS) on the subject of the MQTT
  alert topic (``sensorcast/alerts/{stream}`` -> ``sensorcast.alerts.dev1.temp``): subscribers,
  MQTT ones on NATS's MQTT port too, get each alert once. Not the stream's own republish:
  nats-server 2.9.10 does not hand a republished message to MQTT subscribers of the stream
  leader's node (measured: 0 of 1 whenever the leader was the subscriber's node).
* The retained state of a stream's check: the KV bucket ``<stream>_alert_state`` (key
  ``<check>.<base64url(stream id)>``, value the JSON payload) for NATS clients that come later,
  and a core-NATS publish on the state topic's subject for those subscribed now (MQTT
  subscribers on NATS included). A core publish is not an MQTT retained message: an MQTT
  client that subscribes later does not get it (docs/scale.md).
* A forecast: core NATS on the forecast topic's subject when ``alerts.forecast_topic`` is
  set; best effort, a newer one replaces a lost one.

The engine's thread only appends to bounded in-memory queues; a task on the link's loop
publishes. A full queue drops (counted, logged): alerts never wait for the network in the
engine. ``flush`` tells a partition worker whether every alert handed over so far is in the
alerts stream, before it checkpoints (an alert lost before that is fired again on replay).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import threading
import time
from collections import deque
from typing import Any

from nats.js.kv import KeyValue

from service.alerts.payload import alert_payload, forecast_payload, topic_for
from service.config import AlertsSettings, NatsSettings, Settings
from service.nats import provision, subjects
from service.nats.link import NatsLink
from service.records import Alert, Forecast

log = logging.getLogger(__name__)

ALERT_QUEUE_MAX = 10_000  # alert events and state updates waiting for the loop
FORECAST_QUEUE_MAX = 10_000
_PUBLISH_TIMEOUT_S = 60.0  # one alert's retries (leader elections take ~6 s)
_LOG_EVERY_S = 10.0
# What a subject token may not hold beyond what the topic builder escapes already: NATS
# separates tokens with whitespace-free text and reads a lone * or > as a wildcard.
_SUBJECT_UNSAFE = re.compile(r"[ \t*>]")


def alert_subjects(topic: str) -> str:
    """The alerts stream's subjects for the alert topic template: its fixed levels, then ``>``.

    >>> alert_subjects("sensorcast/alerts/{stream}")
    'sensorcast.alerts.>'
    """
    fixed: list[str] = []
    for level in topic.split("/"):
        if "{" in level:
            break
        fixed.append(level)
    if not fixed:
        raise ValueError(f"alerts.topic {topic!r}: needs a fixed first level to capture alerts in a stream on NATS")
    return subjects.subject_of("/".join(fixed)) + ".>"


def names_for(settings: Settings) -> provision.Names:
    """The streams' and buckets' names, the alerts stream capturing ``alerts.topic``. Every
    process must provision with these (a differing subject list would flap the stream)."""
    return provision.Names.of(settings.nats, alert_subjects(settings.alerts.topic))


def nats_subject(topic: str) -> str:
    """A filled-in MQTT topic as a publishable subject (NATS's MQTT side maps it back)."""
    subject = subjects.subject_of(topic)
    if _SUBJECT_UNSAFE.search(subject) is None:
        return subject
    return _SUBJECT_UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", subject)


def message_id(alert: Alert) -> str:
    """Deterministic per alert event: a replay of the same readings gives the same id."""
    return f"{alert.stream_id}|{alert.check}|{alert.state}|{alert.ts_ns}"


def state_key(alert: Alert) -> str:
    """KV key of a stream's check (KV keys allow only [-/_=.a-zA-Z0-9]: the id is base64url)."""
    return f"{alert.check}.{base64.urlsafe_b64encode(alert.stream_id.encode()).decode().rstrip('=')}"


class NatsAlertPublisher:
    """Drop-in for ``AlertPublisher`` when alerts go to NATS (plus ``flush``)."""

    def __init__(self, nats_settings: NatsSettings, settings: AlertsSettings, link: NatsLink | None = None,
                 names: provision.Names | None = None) -> None:
        self.settings = settings
        self.nats = nats_settings
        self.names = names or provision.Names.of(nats_settings, alert_subjects(settings.topic))
        self._own_link = link is None
        self.link = link or NatsLink(nats_settings, "sensorcast-alerts")
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._alerts: deque[tuple[int, Alert, bool]] = deque()  # (number, alert, event)
        self._forecasts: deque[tuple[str, bytes]] = deque()
        self._handed = 0  # alerts accepted so far (numbered 1..)
        self._settled = 0  # the highest number published (or given up on)
        self._lost = False  # an alert dropped or failed since the last flush
        self._wake: asyncio.Event | None = None
        self._task: Any = None
        self._kv: KeyValue | None = None
        self._stopping = False
        self.published = 0  # alert events the alerts stream acknowledged
        self.duplicates = 0  # of those, ones it had already (a replay after failover)
        self.dropped_alerts = 0
        self.dropped_forecasts = 0
        self._logged_at = 0.0

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        if self._own_link:
            self.link.start()
        self.link.run(self._setup(), None)
        self._task = self.link.spawn(self._run())
        self._poke()  # what was handed over before start

    async def _setup(self) -> None:
        self._wake = asyncio.Event()
        await provision.ensure_all(self.link.js, self.nats, self.names)
        self._kv = await self.link.js.key_value(self.names.alert_state)

    def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Publish what is queued (up to ``flush_timeout_s``), then stop."""
        if self._task is not None:
            self.flush(flush_timeout_s)
            self._stopping = True
            self._poke()
            try:
                self._task.result(5.0)
            except Exception as e:
                log.warning("NATS alerts: publisher task ended with %s", e)
            self._task = None
        if self._own_link:
            self.link.close()

    @property
    def connected(self) -> bool:
        return self.link.connected

    def pending(self) -> int:
        """Alerts handed over and not yet published."""
        with self._lock:
            return self._handed - self._settled

    def flush(self, timeout_s: float) -> bool:
        """Wait until every alert handed over so far is in the alerts stream. False on timeout,
        or when one handed over since the previous flush was dropped or failed for good."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            upto = self._handed
            while self._settled < upto:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._done.wait(left)
            ok, self._lost = not self._lost, False
            return ok

    # -- what the pipeline calls (the engine's thread; never blocks) -------------
    def publish_alert(self, alert: Alert, event: bool = True) -> None:
        with self._lock:
            if len(self._alerts) >= ALERT_QUEUE_MAX:
                self.dropped_alerts += 1
                self._lost = True  # the next flush reports it
                dropped = True
            else:
                self._handed += 1
                self._alerts.append((self._handed, alert, event))
                dropped = False
        if dropped:
            self._warn(f"alert queue full ({ALERT_QUEUE_MAX}): dropped the alert of {alert.stream_id} "
                       f"({alert.state}); {self.dropped_alerts} dropped so far")
            return
        self._poke()

    def publish_forecast(self, fc: Forecast, device: str, quantity: str) -> None:
        topic = self.settings.forecast_topic
        if not topic:
            return
        with self._lock:
            if len(self._forecasts) >= FORECAST_QUEUE_MAX:
                self.dropped_forecasts += 1
                return
            self._forecasts.append((nats_subject(topic_for(topic, device, quantity, fc.stream_id)),
                                    forecast_payload(fc)))
        self._poke()

    # -- the loop's side -----------------------------------------------------------
    def _poke(self) -> None:
        wake = self._wake
        if wake is not None:
            self.link.loop.call_soon_threadsafe(wake.set)

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                with self._lock:
                    item = self._alerts.popleft() if self._alerts else None
                    forecasts = list(self._forecasts)
                    self._forecasts.clear()
                for subject, body in forecasts:
                    await self._core(subject, body)
                if item is None:
                    break
                n, alert, event = item
                ok = await self._alert(alert, event)
                self._mark_settled(n, ok)
            if self._stopping:
                return

    def _mark_settled(self, n: int, ok: bool) -> None:
        with self._lock:
            self._settled = n  # the queue is worked in order
            self._lost = self._lost or not ok
            self._done.notify_all()

    async def _alert(self, alert: Alert, event: bool) -> bool:
        body = alert_payload(alert)
        s = self.settings
        ok = True
        if event:
            subject = nats_subject(topic_for(s.topic, alert.device, alert.quantity, alert.stream_id, alert.check))
            headers = {"Nats-Msg-Id": message_id(alert)}
            tries = 0

            async def once() -> Any:
                nonlocal tries
                tries += 1
                return await self.link.js.publish(self.names.alert_prefix + subject, body, stream=self.names.alerts,
                                                  headers=headers)

            try:
                ack = await provision.retrying(f"alert to {subject}", once, _PUBLISH_TIMEOUT_S)
            except Exception as e:
                ok = False
                self._warn(f"alert of {alert.stream_id} ({alert.state}) not published to {subject}: {e}")
            else:
                self.published += 1
                if ack.duplicate:
                    self.duplicates += 1
                # Subscribers get it once: not when the stream had it already (a replay). An
                # earlier try of ours may have been stored unanswered: then it goes out anyway.
                if not ack.duplicate or tries > 1:
                    await self._core(subject, body)
        if s.state_topic:
            try:
                kv = self._kv
                assert kv is not None
                await provision.retrying("alert state", lambda: kv.put(state_key(alert), body), _PUBLISH_TIMEOUT_S)
            except Exception as e:
                self._warn(f"alert state of {alert.stream_id} not stored: {e}")
            state_topic = topic_for(s.state_topic, alert.device, alert.quantity, alert.stream_id, alert.check)
            await self._core(nats_subject(state_topic), body)
        return ok

    async def _core(self, subject: str, body: bytes) -> None:
        try:
            await self.link.nc.publish(subject, body)
        except Exception as e:  # disconnected beyond nats-py's buffer: best effort
            self._warn(f"publish to {subject} failed: {e}")

    def _warn(self, text: str) -> None:
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_S:
            self._logged_at = now
            log.warning("NATS alerts: %s", text)
