"""Home Assistant MQTT discovery (``homeassistant.enabled``): each stream appears as entities.

The engine's thread only notes a stream the first time it is seen (a forecast, or an alert
of a check not seen before for it) and queues it: a set lookup per forecast. This addon's
thread builds the discovery documents (service/alerts/hadocs.py) and publishes them,
retained, QoS 1, on a client of its own. That client's last will marks the forecast and
alert entities unavailable (``offline``, retained, on ``homeassistant.availability_topic``)
when the process dies; it publishes ``online`` on every connect and ``offline`` on a clean
stop.

Bounded: at most ``homeassistant.max_streams`` streams are discovered (the rest are
counted and logged once). Every ``homeassistant.refresh_s`` the documents are rebuilt and those that
changed (a unit set meanwhile) are published again; all are published again after a
reconnect, in case the broker lost its retained messages.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson
import paho.mqtt.client as mqtt

from service.alerts.hadocs import StreamSeen, availability_topic, check_document, stream_documents
from service.config import Settings, StreamRules
from service.mqtt import make_client
from service.records import Alert, Forecast

log = logging.getLogger(__name__)

_OK = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)  # NO_CONN: paho keeps QoS 1 and sends on connect

# (stream id, feature of a multivariate stream or None) -> unit: UnitBook.unit_of (service/units.py)
UnitOf = Callable[[str, "str | None"], "str | None"]


class _Engine(Protocol):
    def stream(self, stream_id: str) -> object | None: ...
    def rules_of(self, stream_id: str) -> tuple[StreamRules | None, object] | None: ...


def unit_from(engine: _Engine) -> UnitOf:
    """A stream's unit: the engine's (``StreamStatus.unit``: settings, binding or payload), else its own rules'."""

    def unit_of(stream_id: str, feature: str | None = None) -> str | None:
        unit = getattr(engine.stream(stream_id), "unit", None)
        if isinstance(unit, str) and unit:
            return unit
        rules = engine.rules_of(stream_id)
        return None if rules is None or rules[0] is None else rules[0].unit

    return unit_of


class HomeAssistantDiscovery:
    """An addon of the pipeline (``pipe.addons``) fed by its forecast and alert sinks."""

    name = "home assistant discovery"

    def __init__(self, settings: Settings, unit_of: UnitOf | None = None) -> None:
        self.settings = settings
        self.ha = settings.homeassistant
        self._unit_of = unit_of
        self._refresh_s = settings.homeassistant.refresh_s
        self._queue: queue.SimpleQueue[tuple[StreamSeen, str | None]] = queue.SimpleQueue()
        # Written on the engine's thread only (the sinks); the worker reads its own copies.
        self._noted: set[str] = set()
        self._noted_checks: set[tuple[str, str]] = set()
        self.refused = 0  # streams beyond max_streams
        # The worker's state: every stream discovered and the documents last published.
        self._streams: dict[str, StreamSeen] = {}
        self._checks: dict[str, tuple[StreamSeen, set[str]]] = {}  # stream -> (as first seen, checks)
        self._published: dict[str, bytes] = {}
        self._avail = availability_topic(settings)
        self._client, self._addr = make_client(settings.mqtt, self.ha.client_id)
        self._client.will_set(self._avail, "offline", qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._reconnected = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- sinks: the engine's thread; note and queue, nothing else -----------------------
    def see_forecast(self, fc: Forecast) -> None:
        sid = fc.stream_id
        if sid in self._noted or fc.key is None or not self._room(sid):
            return
        self._noted.add(sid)
        feats = fc.features if fc.multivariate else (fc.key.quantity,)
        self._queue.put((StreamSeen(sid, fc.key.device, fc.key.quantity, fc.key.tags, feats, fc.multivariate), None))

    def see_alert(self, alert: Alert) -> None:
        sid = alert.stream_id
        if (sid, alert.check) in self._noted_checks:
            return
        key = alert.key
        first = sid not in self._noted
        if first and not self._room(sid):
            return
        self._noted_checks.add((sid, alert.check))
        seen = StreamSeen(sid, key.device, key.quantity, key.tags, (key.quantity,), alert.multivariate)
        if first and not alert.multivariate:  # a univariate stream's entities are known without a forecast
            self._noted.add(sid)
            self._queue.put((seen, None))
        self._queue.put((seen, alert.check))

    def _room(self, sid: str) -> bool:
        if len(self._noted) < self.ha.max_streams:
            return True
        self.refused += 1
        if self.refused == 1:
            log.warning("home assistant: %d streams discovered (homeassistant.max_streams); %s and later streams "
                        "get no entities", self.ha.max_streams, sid)
        return False

    # -- addon ------------------------------------------------------------------------
    def start(self) -> None:
        log.info("home assistant discovery: %s/{sensor,binary_sensor}/%s/..., availability %s, forecasts on %s",
                 self.ha.discovery_prefix, self.ha.node_id, self._avail, self.settings.alerts.forecast_topic)
        self._client.connect_async(self._addr.host, self._addr.port, keepalive=self.settings.mqtt.keepalive_s)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="ha-discovery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._client.is_connected():
            info = self._client.publish(self._avail, "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # not sent: the last will says the same
                info.wait_for_publish(2.0)
        self._client.disconnect()
        self._client.loop_stop()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the worker -------------------------------------------------------------------
    def _run(self) -> None:
        next_refresh = time.monotonic() + self._refresh_s
        while not self._stopping.is_set():
            try:
                if self._reconnected.is_set():
                    self._reconnected.clear()
                    self._publish_all(force=True)
                elif time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + self._refresh_s
                    self._publish_all(force=False)
                try:
                    seen, check = self._queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                self._discover(seen, check)
            except Exception:  # one stream's failure must not end discovery for the others
                log.exception("home assistant: could not publish discovery; continuing")

    def _discover(self, seen: StreamSeen, check: str | None) -> None:
        sid = seen.stream_id
        if check is None:
            if sid in self._streams:
                return
            self._streams[sid] = seen
            docs = stream_documents(self.settings, seen, self._units(seen))
        else:
            self._checks.setdefault(sid, (self._streams.get(sid, seen), set()))[1].add(check)
            docs = check_document(self.settings, self._streams.get(sid, seen), check)
        self._send(docs, force=False)

    def _publish_all(self, force: bool) -> None:
        self._client.publish(self._avail, "online", qos=1, retain=True)
        for seen in list(self._streams.values()):
            self._send(stream_documents(self.settings, seen, self._units(seen)), force)
        for seen, checks in list(self._checks.values()):
            for check in sorted(checks):
                self._send(check_document(self.settings, seen, check), force)

    def _send(self, docs: dict[str, dict[str, Any]], force: bool) -> None:
        for topic, doc in docs.items():
            body = orjson.dumps(doc)
            if not force and self._published.get(topic) == body:
                continue
            info = self._client.publish(topic, body, qos=1, retain=True)
            if info.rc not in _OK:
                log.warning("home assistant: discovery publish refused by paho (%s)", mqtt.error_string(info.rc))
                continue
            self._published[topic] = body

    def _units(self, seen: StreamSeen) -> dict[str, str | None]:
        if self._unit_of is None:
            return {}
        try:
            if seen.multivariate:
                return {f: self._unit_of(seen.stream_id, f) for f in seen.features}
            return {seen.quantity: self._unit_of(seen.stream_id, None)}
        except Exception:  # a unit is a nicety: never a reason to skip the entity
            log.debug("home assistant: no unit for %s", seen.stream_id, exc_info=True)
            return {}

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("home assistant: broker refused connection: %s", reason)
            return
        client.publish(self._avail, "online", qos=1, retain=True)
        self._reconnected.set()
