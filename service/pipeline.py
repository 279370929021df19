"""Where a reading goes: the one place the flow is wired (``Pipeline.build``).

    MQTT ──> MqttSource ──> Decoder ──> BatchWriter ──> store, or the durable spool
                 │            (ingest role: ``build_ingester``)     │
                 │  each decoded message at once (live),            └─> ack to the broker once durable
                 │  before the store write
                 v
             TickOnArrival.feed: Engine.accept, then tick at once (the runner also ticks
                 │               on the clock, checkpoints, reloads)
                 v
             Engine.tick: one batched ONNX step per model ──> score ──> decide
                                                   │                             │
                                           on_forecast                       on_alert
                                                   v                             v
                                AlertPublisher.publish_forecast     AlertLog.append (history, queued), then
                                (QoS 0, when a topic is set)        AlertPublisher.publish_alert
                                                                    (outbox, QoS 1, retained state)

    POST /v1/readings ──> Decoder ──> Ingester.submit (the same durable path as MQTT)

Roles (``settings.roles``, validated by ``Settings``) choose which parts this process
runs: ``ingest`` (the ingester), ``inference`` (engine and alert publisher), ``api`` (the
REST server, which ``serve`` starts around this pipeline; ``sensorcast ingest`` is this
pipeline with the ingest role alone). An ``inference`` process without ``ingest``
subscribes to the readings itself (``intake``: same decoder, a clean session, client id
``<mqtt.client_id>-inference``), so ingest and inference can run as two processes, each
with its own interpreter lock. ``start`` brings parts up in flow order from the far end
(publisher first, so no alert is emitted into nothing); ``stop`` stops intake first,
then flushes, checkpoints and closes.

The inference role also opens the stream settings (``streams.settings_path``: each
stream's own alert rules, handed to the engine as ``stream_rules``) and the alert history
(``alerts.history_path``, read by ``GET /v1/alerts``). A history file that cannot be
opened leaves the service running without history (``history_error`` says why); stream
settings that cannot be opened stop the start, since alerting by other rules than those
configured would go unnoticed.

``liveness()`` names the threads this process runs and whether each is alive; a
``Watchdog`` (service/watchdog.py) checks them while the pipeline runs and calls
``on_fatal`` on the first dead one (``serve`` and ``ingest`` then exit with code 70).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from service.alerts.publisher import AlertPublisher
from service.config import Settings, StreamRules
from service.connwatch import ConnectionWatch, pipeline_checks
from service.errors import ConfigError
from service.metrics import Metrics
from service.mqtt import parse_broker_url
from service.ports import Addon, DecoderLike, EngineLike, IngesterLike, RunnerLike
from service.records import Alert, Forecast
from service.store.alertlog import AlertLog, HistoryError
from service.store.base import Store
from service.store.streamsettings import SettingsStoreError, StreamSettings
from service.units import UnitBook
from service.watchdog import Watchdog
from service.wiring import build_engine, build_ingester

if TYPE_CHECKING:
    from service.ingest.mqtt import MqttSource
    from service.ingest.writer import Sink
    from service.nats.outputs import NatsAlertPublisher
    from service.streams.runner import TickOnArrival

log = logging.getLogger(__name__)


class Pipeline:
    """The running parts of one process, wired together; the API reads from it."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        store: Store | None = None,
        engine: EngineLike | None = None,
        ingester: IngesterLike | None = None,
        decoder: DecoderLike | None = None,
        publisher: AlertPublisher | NatsAlertPublisher | None = None,
        runner: RunnerLike | None = None,
        ticker: TickOnArrival | None = None,
        closers: Sequence[Callable[[], object]] = (),
        intake: MqttSource | None = None,
        alert_log: AlertLog | None = None,
        stream_settings: StreamSettings | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.roles = settings.roles
        self.store = store
        self.engine = engine
        self.ingester = ingester
        self.decoder = decoder
        self.publisher = publisher
        self.runner = runner
        self.ticker = ticker
        self.intake = intake
        self.alert_log = alert_log
        self.history_error: str | None = None  # why there is no alert history, when there is none
        self.stream_settings = stream_settings
        # Each stream's unit (settings > binding rules > readings): build() feeds it from the decoder.
        self.units = UnitBook(own=self._own_rules)
        self._closers = list(closers)
        self.started = False
        # Who else sees each alert and forecast (registered in build, called in order, never
        # raising into the engine). alert_sinks always see an alert; notify_sinks are
        # notifications (webhooks...), which a silenced stream does not send.
        self.alert_sinks: list[tuple[str, Callable[[Alert], object]]] = []
        self.notify_sinks: list[tuple[str, Callable[[Alert], object]]] = []
        self.forecast_sinks: list[tuple[str, Callable[[Forecast], object]]] = []
        self.addons: list[Addon] = []
        # Called (from the watchdog's thread) with the names of dead threads; None: log only.
        self.on_fatal: Callable[[list[str]], object] | None = None
        self.watchdog: Watchdog | None = None
        self.connwatch: ConnectionWatch | None = None  # broker/store outages at WARNING while they last

    def _own_rules(self, stream_id: str) -> StreamRules | None:
        return None if self.stream_settings is None else self.stream_settings.get(stream_id)

    def _with_unit(self, alert: Alert) -> Alert:
        """``alert`` with its stream's unit (a multivariate stream's: the alert's feature's)."""
        try:
            unit = self.units.unit_of(alert.stream_id, alert.quantity if alert.multivariate else None)
        except Exception:
            log.exception("no unit for the alert of %s", alert.stream_id)
            return alert
        return alert if unit is None or unit == alert.unit else replace(alert, unit=unit)

    # -- the callbacks the engine is given ------------------------------------------
    def on_alert(self, alert: Alert) -> None:
        """Engine -> log, history and MQTT. Never raises into the engine's loop: the alert is already listed.

        The history is handed the alert first, but only queued: its writer commits it within
        milliseconds, off the engine's tick (see service/store/alertlog.py).

        A silenced stream (``PUT /v1/streams/{id}/silence``) still has its alert logged, in the
        history (marked silenced), in alert_sinks and on its retained state topic, which says
        what is true now (Home Assistant entities, dashboards); the alert event topic and the
        notify_sinks (webhooks), which call for someone, are skipped. Every consumer gets the alert
        with its stream's unit (``self.units``).
        """
        alert = self._with_unit(alert)
        silenced = self.stream_settings is not None and self.stream_settings.silenced_until(alert.stream_id) is not None
        log.info("alert %s %s: value %.6g, expected %.6g, score %.4g%s", alert.stream_id, alert.state, alert.value,
                 alert.expected, alert.score, " (silenced: not notified)" if silenced else "")
        if self.alert_log is not None:
            try:
                self.alert_log.append(alert, silenced)
            except Exception:
                log.exception("could not queue alert for %s (%s) in the history", alert.stream_id, alert.state)
        for name, sink in self.alert_sinks:
            try:
                sink(alert)
            except Exception:
                log.exception("%s could not take the alert for %s (%s)", name, alert.stream_id, alert.state)
        if self.publisher is not None:
            try:
                self.publisher.publish_alert(alert, event=not silenced)
            except Exception:
                log.exception("could not queue alert for %s (%s) in the outbox", alert.stream_id, alert.state)
        if silenced:
            return
        for name, sink in self.notify_sinks:
            try:
                sink(alert)
            except Exception:
                log.exception("%s could not take the alert for %s (%s)", name, alert.stream_id, alert.state)

    def on_forecast(self, fc: Forecast) -> None:
        if fc.key is None:  # not a stream's (POST /v1/predict)
            return
        for name, sink in self.forecast_sinks:
            try:
                sink(fc)
            except Exception:
                log.exception("%s could not take the forecast for %s", name, fc.stream_id)
        if self.publisher is None:
            return
        try:
            # A multivariate (device) stream's key has quantity "*": its topic says so.
            self.publisher.publish_forecast(fc, fc.key.device, fc.key.quantity)
        except Exception:
            log.exception("could not publish forecast for %s", fc.stream_id)

    # -- building from settings --------------------------------------------------------
    @classmethod
    def build(cls, settings: Settings, metrics: Metrics | None = None) -> Pipeline:
        """Open every part this process's roles need, wired in flow order (imports only what is used)."""
        from service.ingest.decode import Decoder

        metrics = metrics or Metrics()
        roles = settings.roles
        decoder = Decoder(settings.ingest)  # one decoder (and its caches) for MQTT and HTTP
        pipe = cls(settings, metrics, decoder=decoder)
        pipe.units = UnitBook(settings.streams.max_streams, metrics, pipe._own_rules, settings.models.bindings)
        decoder.on_unit = pipe.units.seen
        if roles & {"ingest", "inference"}:
            from service.store import open_store

            pipe.store = open_store(settings.store)
            pipe._closers.append(pipe.store.close)
        live: list[Sink] = []  # who sees each reading as soon as it is decoded
        if "inference" in roles:
            pipe._open_alert_stores()
            if settings.nats.url:  # a replica owning a share of the partitions (service/nats/replica.py)
                from service.nats.outputs import NatsAlertPublisher, names_for
                from service.nats.replica import build_replica

                out_nats = (NatsAlertPublisher(settings.nats, settings.alerts, names=names_for(settings))
                            if settings.alerts.enabled else None)
                pipe.publisher = out_nats  # flushed by each partition before it checkpoints
                replica = build_replica(settings, metrics, pipe.on_alert, pipe.on_forecast,
                                        None if pipe.stream_settings is None else pipe.stream_settings.get,
                                        out_nats, decoder)
                pipe.engine, pipe.runner = replica, replica
            else:
                if settings.alerts.enabled:
                    pipe.publisher = AlertPublisher(settings.mqtt, settings.alerts)
                pipe.engine, pipe.runner = build_engine(settings, pipe.store, metrics, pipe.on_alert,
                                                         pipe.on_forecast, pipe.stream_settings)
            from service.store import outputs

            if outputs.enabled(settings):  # forecasts, scores and alerts as measurements (Grafana)
                out = outputs.StoreOutputs(outputs.line_writer(pipe.store), settings, metrics, pipe.engine)
                if out.every_step:  # else sampled by its own thread: no Forecast per stream-step
                    pipe.forecast_sinks.append((out.name, out.on_forecast))
                pipe.alert_sinks.append((out.name, out.on_alert))
                pipe.addons.append(out)
            if settings.webhooks.urls:  # each alert event POSTed, signed, through its own outbox
                from service.alerts.webhook import Webhooks

                hooks = Webhooks(settings.webhooks, metrics)
                pipe.notify_sinks.append(("webhooks", hooks.enqueue))
                pipe.addons.append(hooks)
            if settings.homeassistant.enabled:  # each stream's value, forecast and alert state as HA entities
                from service.alerts.homeassistant import HomeAssistantDiscovery

                ha = HomeAssistantDiscovery(settings, pipe.units.unit_of)
                pipe.forecast_sinks.append((ha.name, ha.see_forecast))
                pipe.alert_sinks.append((ha.name, ha.see_alert))
                pipe.addons.append(ha)
            if not settings.nats.url:  # a replica reads its partitions from JetStream, ticking in event time
                from service.streams.runner import TickOnArrival

                pipe.ticker = TickOnArrival(pipe.engine, settings.streams.gather_s)
                live.append(pipe.ticker.feed)
        if "ingest" in roles:
            assert pipe.store is not None
            pipe.ingester = build_ingester(settings, pipe.store, metrics, decoder, live=live)
            if settings.store.retention_days is not None or settings.store.downsample_after_days is not None:
                from service.store.retention import Retention  # the process that writes prunes

                pipe.addons.append(Retention(pipe.store, settings.store))
        elif pipe.engine is not None and not settings.nats.url:  # inference alone: its own subscription
            from service.ingest.mqtt import MqttSource
            from service.ingest.refusals import RefusalReporter

            pipe.intake = MqttSource(
                settings.mqtt, decoder, None, RefusalReporter(metrics, None), settings.ingest.qos,
                live=live, client_id=f"{settings.mqtt.client_id}-inference", metrics=metrics,
            )
        return pipe

    def _open_alert_stores(self) -> None:
        alerts = self.settings.alerts
        try:
            self.stream_settings = StreamSettings(self.settings.streams.settings_path)
        except SettingsStoreError as e:
            raise ConfigError(str(e)) from e
        self._closers.append(self.stream_settings.close)
        try:
            self.alert_log = AlertLog(alerts.history_path, alerts.history_max_rows, alerts.history_max_days * 86_400.0)
        except HistoryError as e:
            self.history_error = str(e)
            log.error("%s; running without alert history (alerts are still published)", e)
            return
        # Closed after the engine (in stop): its last tick's alerts are written too.
        self._closers.append(self.alert_log.close)

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        if self.publisher is not None:
            self.publisher.start()
        for addon in self.addons:
            addon.start()
        if self.runner is not None:
            self.runner.start()  # restores checkpoints, then ticks every streams.tick_s
        if self.ticker is not None:
            self.ticker.start()
        if self.ingester is not None:
            self.ingester.start()
        if self.intake is not None:
            self.intake.start()
        self.started = True
        self.watchdog = Watchdog(self.liveness, self.settings.watchdog.interval_s, self._threads_died)
        self.watchdog.start()
        if self.settings.nats.url:  # readings (and alerts) over NATS: name it, not the unused MQTT broker
            from service.nats.link import redacted

            checks = pipeline_checks(redacted(self.settings.nats.url), self.ingester, self.intake, self.publisher,
                                     "NATS", "alerts wait in a bounded in-memory queue")
        else:
            addr = parse_broker_url(self.settings.mqtt)  # host:port only: no credentials in the log
            checks = pipeline_checks(f"{addr.host}:{addr.port}", self.ingester, self.intake, self.publisher)
        self.connwatch = ConnectionWatch(checks)
        self.connwatch.start()
        log.info("pipeline started (roles: %s)", ",".join(sorted(self.roles)))
        log.info("watchdog: checking every %.1f s that these threads are alive: %s",
                 self.settings.watchdog.interval_s, ", ".join(sorted(self.liveness())) or "none")

    def liveness(self) -> dict[str, bool]:
        """Each long-lived thread of the running pipeline -> alive ({} unless started)."""
        if not self.started:
            return {}
        out: dict[str, bool] = {}
        if self.ingester is not None:
            out.update(self.ingester.liveness())
        if self.intake is not None:
            out["mqtt intake"] = self.intake.loop_alive()
        if self.ticker is not None:
            out["engine tick on arrival"] = self.ticker.alive()
        if self.runner is not None:
            out["engine runner"] = self.runner.running
        if self.alert_log is not None:
            out["alert history writer"] = self.alert_log.alive()
        for addon in self.addons:
            out[addon.name] = addon.alive()
        return out

    def _threads_died(self, dead: list[str]) -> None:
        if self.on_fatal is not None:
            self.on_fatal(dead)

    def stop(self) -> None:
        """Stop intake, let the engine finish and checkpoint, flush alerts, close."""
        if self.watchdog is not None:  # threads end on purpose from here on
            self.watchdog.stop()
            self.watchdog = None
        if self.connwatch is not None:
            self.connwatch.stop()
        if self.ingester is not None:
            _safely("stop ingester", self.ingester.stop)
        if self.intake is not None:
            _safely("stop inference intake", self.intake.stop)
        if self.ticker is not None:
            _safely("stop tick on arrival", self.ticker.stop)
        if self.runner is not None:
            _safely("stop engine", self.runner.stop)  # a last tick for what was flushed, then a checkpoint
        if self.engine is not None:
            _safely("close engine", self.engine.close)
        if self.publisher is not None:
            _safely("stop alert publisher", self.publisher.stop)
        for addon in reversed(self.addons):
            _safely(f"stop {addon.name}", addon.stop)
        for close in self._closers:
            _safely("close", close)
        self.started = False
        log.info("pipeline stopped")


def _safely(what: str, fn: Callable[[], object]) -> None:
    # Shutdown must reach every part: one failing step is logged, the rest still run.
    try:
        fn()
    except Exception:
        log.exception("shutdown: %s failed", what)
