"""The ingester: MQTT (and HTTP ``submit``) -> decode -> batch -> store or spool -> ack -> sinks.

It is given its parts, wired by ``service.pipeline.build_ingester`` (the one place the
flow is put together): the decoder, the writer thread with its spool, the refusal
reporter and, when it subscribes, the MQTT source. It starts and stops them in order and
answers for them (status, liveness, the HTTP path). Two kinds of consumers:

* ``sinks`` (the writer's) receive every batch of accepted readings once it is durable
  (in the store or the spool);
* ``live`` sinks receive MQTT readings as soon as they are decoded (before the store write,
  so database latency never delays an alert) and HTTP readings once they are durable (the
  request waits for that anyway). This is how the inference engine is fed. A reading the
  broker redelivers after a failed write reaches them twice; the engine drops duplicates.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from service.errors import StoreError
from service.ingest.decode import Decoder
from service.ingest.refusals import RefusalReporter
from service.ingest.writer import BatchWriter, Item, Sink
from service.metrics import Metrics
from service.records import Reading
from service.store.lineproto import stream_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestStatus:
    broker_connected: bool
    store_ok: bool
    spool_readings: int
    spool_bytes: int
    spool_full: bool
    queued: int
    stored: int
    last_error: str | None
    sessions_lost: int = 0  # reconnects that found the broker without our persistent session
    last_session_lost: float | None = None  # time.time() of the last one


class Flag(Protocol):
    def is_set(self) -> bool: ...


class Source(Protocol):
    """What the ingester uses of its subscription: ``service.ingest.mqtt.MqttSource``, or
    ``service.nats.writer_source.NatsReadingsSource`` when readings come from NATS."""

    @property
    def connected(self) -> Flag: ...
    @property
    def subscribed(self) -> threading.Event: ...
    @property
    def sessions_lost(self) -> int: ...
    @property
    def last_session_lost(self) -> float | None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def close_intake(self) -> None: ...
    def loop_alive(self) -> bool: ...


class Ingester:
    def __init__(
        self,
        decoder: Decoder,
        writer: BatchWriter,
        reporter: RefusalReporter,
        metrics: Metrics,
        source: Source | None = None,
        live: Sequence[Sink] = (),
    ) -> None:
        self.decoder = decoder  # the HTTP path decodes with the same one (and its caches)
        self.writer = writer
        self.spool = writer.spool
        self.store = writer.store
        self.reporter = reporter
        self.metrics = metrics
        self.source = source  # None: HTTP intake only
        self.live = list(live)
        self._http_in = metrics.readings_in.labels("http")
        self._started = False
        self._lock = threading.Lock()

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        if self.spool.readings:
            log.info("spool holds %d readings from an earlier run; replaying first", self.spool.readings)
        self.writer.start()
        if self.source is not None:
            self.source.start()

    def stop(self) -> None:
        """Stop intake, flush what is queued (store or spool), acknowledge it, disconnect."""
        with self._lock:
            if not self._started:
                return
            self._started = False
        if self.source is not None:
            self.source.close_intake()
        self.writer.stop()
        if self.source is not None:
            self.source.stop()

    # --- HTTP path -----------------------------------------------------------------------
    def submit(self, readings: Sequence[Reading], timeout_s: float = 10.0) -> None:
        """Store ``readings`` with the same batching and durability; returns once durable.

        Raises ``ValueError`` for a reading that cannot be stored (bad name, non-finite
        value) and ``StoreError`` when it could not be made durable within ``timeout_s``.
        """
        for r in readings:
            problem = stream_problem(r.stream)
            if problem:
                raise ValueError(f"cannot store stream {r.stream.id!r}: {problem}")
            if r.value != r.value or r.value in (float("inf"), float("-inf")):
                raise ValueError(f"value of {r.stream.id!r} at {r.ts_ns} is not finite: {r.value!r}")
        if not readings:
            return
        item = Item(list(readings), done=threading.Event())
        if not self.writer.put(item, timeout_s):
            raise StoreError("ingest queue is full (store and spool cannot keep up); try again later")
        assert item.done is not None
        if not item.done.wait(timeout_s) or not item.ok:
            # The store's own error (URLs, paths) stays in the log; the caller gets the gist.
            log.warning("HTTP readings not durable within %.0f s: %s", timeout_s,
                        "spool full" if self.spool.full else self.writer.state.last_error or "store not answering")
            raise StoreError("readings not yet durable: " + ("spool full" if self.spool.full else "store not answering"))
        self._http_in.inc(len(readings))
        for sink in self.live:
            sink(list(readings))

    # --- state ---------------------------------------------------------------------------
    @property
    def subscribes(self) -> bool:
        """Whether readings come from MQTT too (else only from HTTP ``submit``)."""
        return self.source is not None

    def liveness(self) -> dict[str, bool]:
        """Whether each thread this ingester runs is alive (for the watchdog)."""
        out = {"store writer": self.writer.is_alive()}
        if self.source is not None:
            out["mqtt intake"] = self.source.loop_alive()
        return out

    def status(self) -> IngestStatus:
        return IngestStatus(
            broker_connected=self.source is not None and self.source.connected.is_set(),
            store_ok=self.writer.state.store_ok,
            spool_readings=self.spool.readings,
            spool_bytes=self.spool.bytes,
            spool_full=self.spool.full,
            queued=self.writer.queue.qsize(),
            stored=self.writer.state.stored,
            last_error=self.writer.state.last_error,
            sessions_lost=self.source.sessions_lost if self.source is not None else 0,
            last_session_lost=self.source.last_session_lost if self.source is not None else None,
        )

