"""Building the ingest role's parts and the single-process engine for ``Pipeline.build``.

``build_ingester`` is also what the tests and ``sensorcast ingest`` use to get an ingester
on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from service.config import Settings
from service.metrics import Metrics
from service.ports import EngineLike, RunnerLike
from service.records import Alert, Forecast
from service.store.base import Store
from service.store.streamsettings import StreamSettings

if TYPE_CHECKING:
    from service.ingest.decode import Decoder
    from service.ingest.ingester import Ingester
    from service.ingest.mqtt import MqttSource
    from service.ingest.writer import Sink
    from service.nats.writer_source import NatsReadingsSource

log = logging.getLogger(__name__)


def build_ingester(
    settings: Settings,
    store: Store,
    metrics: Metrics,
    decoder: Decoder | None = None,
    *,
    live: Sequence[Sink] = (),
    sinks: Sequence[Sink] = (),
    mqtt: bool = True,
) -> Ingester:
    """The ingest role's parts, wired: MQTT source -> decoder -> writer -> store or spool -> ack.

    ``live`` sinks get readings as soon as they are decoded, ``sinks`` once they are
    durable (see service/ingest/ingester.py). ``mqtt=False``: HTTP intake only.
    """
    from service.ingest.decode import Decoder
    from service.ingest.ingester import Ingester
    from service.ingest.mqtt import MqttSource
    from service.ingest.refusals import RefusalReporter
    from service.ingest.writer import BatchWriter
    from service.store.spool import Spool

    ing = settings.ingest
    decoder = decoder or Decoder(ing)
    spool = Spool(settings.store.spool_dir, settings.store.spool_max_bytes)
    writer = BatchWriter(store, spool, metrics, ing.batch_size, ing.batch_interval_s, ing.queue_max, sinks=sinks)
    source: MqttSource | NatsReadingsSource | None = None
    topic = ing.dead_letter_topic

    def dead_letter(body: bytes) -> None:  # looks the source up when called: it is built after the reporter
        if source is not None and topic is not None:
            source.publish_dead_letter(topic, body)

    reporter = RefusalReporter(metrics, dead_letter if topic else None)
    if mqtt and settings.nats.url:  # a writer in the consumer group over the NATS readings stream
        from service.nats.outputs import names_for
        from service.nats.writer_source import NatsReadingsSource

        source = NatsReadingsSource(settings.nats, decoder, writer, reporter, live=live, names=names_for(settings))
        writer.acker = source.ack
    elif mqtt:
        source = MqttSource(settings.mqtt, decoder, writer, reporter, ing.qos, live=live, metrics=metrics)
        writer.acker = source.ack  # a message is acknowledged once the writer made it durable
    return Ingester(decoder, writer, reporter, metrics, source, live=live)


def build_engine(
    settings: Settings,
    store: Store | None,
    metrics: Metrics,
    on_alert: Callable[[Alert], None],
    on_forecast: Callable[[Forecast], None],
    stream_settings: StreamSettings | None = None,
) -> tuple[EngineLike, RunnerLike]:
    from service.runtime.registry import ModelRegistry
    from service.streams.engine import Engine
    from service.streams.runner import EngineRunner

    registry = ModelRegistry(settings.models.dir, settings.models.threads, metrics)
    engine = Engine(settings, registry, store, metrics, on_alert=on_alert, on_forecast=on_forecast,
                    stream_rules=None if stream_settings is None else stream_settings.get)
    # Building a Forecast per stream-step cost ~25% of the engine thread at 3k readings/s
    # (py-spy): only when forecasts go to MQTT, or every step's to the store (store.write_outputs).
    from service.store.outputs import enabled as outputs_enabled

    every_step = outputs_enabled(settings) and settings.store.outputs_interval_s == 0
    engine.publish_forecasts = settings.alerts.forecast_topic is not None or every_step
    return engine, EngineRunner(engine, restore=True)
