"""Prometheus metrics, one ``Metrics`` object per process (tests build their own).

Components receive the object they report into; ``/metrics`` renders its registry.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Step latency buckets in seconds: one batched ONNX call is ~10 us to ~10 ms.
_STEP_BUCKETS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
_GC_BUCKETS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
_WRITE_BUCKETS = (1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.readings_in = Counter(
            "sensorcast_readings_in", "Readings accepted (MQTT and HTTP).", ["source"], registry=r
        )
        self.readings_refused = Counter(
            "sensorcast_readings_refused", "Messages or readings refused, by reason.", ["reason"], registry=r
        )
        self.readings_stored = Counter("sensorcast_readings_stored", "Readings written to the store.", registry=r)
        self.store_write_latency = Histogram(
            "sensorcast_store_write_seconds", "Latency of one batch write to the store (spool excluded).",
            buckets=_WRITE_BUCKETS, registry=r,
        )
        self.store_errors = Counter("sensorcast_store_errors", "Failed store writes.", registry=r)
        self.store_rejected = Counter(
            "sensorcast_store_rejected",
            "Readings the store refused for good (isolated by bisection, dead-lettered), by reason.",
            ["reason"], registry=r,
        )
        self.writer_errors = Counter(
            "sensorcast_writer_errors",
            "Unexpected exceptions in the writer thread (logged with traceback; the thread keeps going).",
            registry=r,
        )
        self.mqtt_sessions_lost = Counter(
            "sensorcast_mqtt_sessions_lost",
            "Reconnects where the broker no longer had the ingester's persistent session (readings queued for it "
            "meanwhile may be gone).", registry=r,
        )
        self.spool_depth = Gauge("sensorcast_spool_readings", "Readings waiting in the spool.", registry=r)
        self.spool_bytes = Gauge("sensorcast_spool_bytes", "Bytes used by the spool.", registry=r)
        self.spool_full = Gauge("sensorcast_spool_full", "1 while the spool refuses new batches.", registry=r)
        self.steps = Counter("sensorcast_steps", "Stream-steps computed.", ["model"], registry=r)
        self.step_latency = Histogram(
            "sensorcast_step_batch_seconds", "Latency of one batched model call.", ["model"],
            buckets=_STEP_BUCKETS, registry=r,
        )
        self.late_dropped = Counter(
            "sensorcast_readings_late_dropped", "Readings too late or duplicate for the stream state.",
            ["reason"], registry=r,
        )
        self.alerts = Counter("sensorcast_alerts", "Alert events emitted.", ["state"], registry=r)
        self.alert_outbox = Gauge(  # set from the publisher when /metrics is scraped
            "sensorcast_alert_outbox_messages", "Alert messages not yet acknowledged by the broker.", registry=r
        )
        self.webhooks_sent = Counter("sensorcast_webhooks_sent", "Webhook events delivered (2xx).", registry=r)
        self.webhooks_retries = Counter(
            "sensorcast_webhooks_retries", "Webhook attempts that failed and will be retried (connection error, "
            "timeout, 408, 425, 429, 5xx).", registry=r,
        )
        self.webhooks_failed = Counter(
            "sensorcast_webhooks_failed", "Webhook events given up: rejected (3xx/4xx), attempts (max_attempts), "
            "expired (max_age_s), unconfigured (URL removed), unqueued (the outbox refused it).", ["reason"], registry=r,
        )
        self.webhooks_pending = Gauge(
            "sensorcast_webhooks_pending", "Webhook events (one per URL) queued and not yet delivered.", registry=r
        )
        self.streams_refused = Counter(
            "sensorcast_streams_refused", "New streams refused for inference by streams.max_streams or "
            "max_streams_per_device (their readings are still stored).", ["reason"], registry=r,
        )
        self.streams_evicted = Counter(
            "sensorcast_streams_evicted", "Idle streams evicted (outcome saved: state kept for their return; "
            "dropped: too old to continue from, they warm from the store).", ["outcome"], registry=r,
        )
        self.streams = Gauge("sensorcast_streams", "Streams by status.", ["status"], registry=r)
        self.model_errors = Counter("sensorcast_model_errors", "Model loads or reloads refused.", registry=r)
        self.gc_pause = Histogram(
            "sensorcast_gc_pause_seconds", "Pauses of Python's cyclic garbage collector, by generation.",
            ["generation"], buckets=_GC_BUCKETS, registry=r,
        )
        self.gc_frozen = Gauge("sensorcast_gc_frozen_objects", "Objects exempt from collection (gc.freeze).", registry=r)
        self.outputs_written = Counter(
            "sensorcast_outputs_written", "Forecast, score and alert points written to the store (store.write_outputs).",
            ["measurement"], registry=r,
        )
        self.outputs_dropped = Counter(
            "sensorcast_outputs_dropped", "Output points dropped: queue_full, store_error (an outage: never spooled), "
            "invalid (not representable).", ["reason"], registry=r,
        )

        # Set when /metrics is scraped (service/api/routes/health.py), from the engine and /readyz.
        self.alerts_firing = Gauge(
            "sensorcast_alerts_firing", "Checks firing now over every stream, by check.", ["check"], registry=r
        )
        self.stream_alert_firing = Gauge(
            "sensorcast_stream_alert_firing", "1 per firing check of a stream, for the api.metrics_firing_streams "
            "firing streams with the highest anomaly score only (bounded cardinality; sensorcast_alerts_firing "
            "counts them all).", ["stream", "check"], registry=r,
        )
        self.ready = Gauge("sensorcast_ready", "1 when /readyz answers 200 (ready or degraded), else 0.", registry=r)
        self.check_ok = Gauge("sensorcast_check_ok", "1 per /readyz check that passes, else 0.", ["check"], registry=r)
        self._scrape = threading.Lock()  # a render never sees the per-stream series half rebuilt
        self._checks_listed: set[str] = set()

    def set_firing(self, firing: Iterable[tuple[str, Sequence[str], float | None]], top: int,
                   checks: Iterable[str] = ()) -> None:
        """(stream, checks firing, score) of every firing stream -> the totals and the ``top`` per-stream series."""
        totals = dict.fromkeys([*checks, *self._checks_listed], 0)  # a check listed once stays, at 0 when quiet
        rows = [(sid, cs, score) for sid, cs, score in firing if cs]
        for _, cs, _ in rows:
            for c in cs:
                totals[c] = totals.get(c, 0) + 1
        rows.sort(key=lambda row: (-(row[2] if row[2] is not None and math.isfinite(row[2]) else -1.0), row[0]))
        with self._scrape:
            self.stream_alert_firing.clear()
            for sid, cs, _ in rows[:top]:
                for c in cs:
                    self.stream_alert_firing.labels(stream=sid, check=c).set(1)
            for c, n in totals.items():
                self.alerts_firing.labels(check=c).set(n)
            self._checks_listed = set(totals)

    def render(self) -> bytes:
        with self._scrape:
            return generate_latest(self.registry)
