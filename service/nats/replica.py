"""An inference replica: owns a share of the partitions through leases, one engine per partition.

``Replica`` is both what the pipeline ticks (``RunnerLike``: start, stop, running) and what the
API reads (``EngineLike``: a facade over its partitions' engines). Its thread beats every
``lease_ttl_s / 3`` (``Leases.heartbeat``): a partition gained starts a ``PartitionWorker``
(claim the checkpoint, restore, catch up from the stream); a partition lost stops its worker at
once, without a checkpoint (the new owner's claim fenced it). A clean stop checkpoints every
partition and then releases every lease, so the partitions move at once instead of after the TTL.

The facade routes by stream id: a stream lives in the engine of its device's partition, so the
first engine that knows an id answers; lists are merged (streams by id, alerts newest first).
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from service.config import Settings, StreamRules
from service.metrics import Metrics
from service.nats import provision
from service.nats.ckptstore import CheckpointStore
from service.nats.leases import Changes, Lease, Leases
from service.nats.link import NatsLink, replica_name, why
from service.nats.partition import Flushable, PartitionWorker
from service.records import Alert, Forecast, Reading
from service.runtime.registry import ModelRegistry
from service.streams import report
from service.streams.engine import Engine
from service.streams.predict import predict as predict_history
from service.streams.status import ForecastLookup

if TYPE_CHECKING:
    from service.ingest.decode import Decoder
    from service.streams.rules import ResolvedRules
    from service.streams.status import ModelInfo, StreamStatus

log = logging.getLogger(__name__)

WATCH_EVERY_S = 2.0  # models.watch: how often the models directory is looked at


class Replica:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        metrics: Metrics,
        *,
        names: provision.Names,
        outputs: Flushable | None = None,
        on_alert: Callable[[Alert], None] | None = None,
        on_forecast: Callable[[Forecast], None] | None = None,
        stream_rules: Callable[[str], StreamRules | None] | None = None,
        publish_forecasts: bool = False,
        decoder: Decoder | None = None,
        link: NatsLink | None = None,
    ) -> None:
        self.settings = settings
        self._registry = registry
        self.metrics = metrics
        self.names = names
        self.outputs = outputs
        self._on_alert, self._on_forecast, self._stream_rules = on_alert, on_forecast, stream_rules
        self.publish_forecasts = publish_forecasts
        self.decoder = decoder
        self.id = replica_name(settings.nats)
        self._own_link = link is None
        self._link = link  # made at start when not given: building a replica opens nothing
        self._beat: NatsLink | None = None  # the lease heartbeat's own connection
        self.workers: dict[int, PartitionWorker] = {}
        self._lock = threading.Lock()  # the workers dict: the beat thread writes, API threads read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counter: threading.Thread | None = None  # the stream gauges' count (_count_streams)
        self.leases: Leases | None = None
        self.ckpts: CheckpointStore | None = None
        self.last_error: str | None = None

    def _beats(self) -> NatsLink:
        assert self._beat is not None, "Replica.start() first"
        return self._beat

    @property
    def link(self) -> NatsLink:
        if self._link is None:
            self._link = NatsLink(self.settings.nats, f"sensorcast-replica-{self.id}")
        return self._link

    # -- RunnerLike --------------------------------------------------------------------------
    @property
    def registry(self) -> ModelRegistry:
        return self._registry

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None:
            return
        nats = self.settings.nats
        if self._own_link:
            self.link.start()
        self.link.run(provision.ensure_all(self.link.js, nats, self.names), 120)

        async def open_buckets() -> tuple[Any, Any]:
            js = self.link.js
            return await js.key_value(self.names.ckpt), await js.object_store(self.names.state)

        ckpt_kv, objects = self.link.run(provision.retrying("open the checkpoint buckets", open_buckets), 90)
        # The heartbeat has a connection and loop of its own: on the readings' one, its few
        # requests waited behind every partition's fetches of up to fetch_batch messages, and a
        # replica catching up lost its leases (the scale benchmark at 1M readings).
        self._beat = NatsLink(nats, f"sensorcast-leases-{self.id}")
        self._beat.start()
        beat = self._beat

        async def leases_bucket() -> Any:
            return await beat.js.key_value(self.names.leases)

        leases_kv = beat.run(provision.retrying("open the lease bucket", leases_bucket), 90)
        self.leases = Leases(leases_kv, self.id, nats.partitions, nats.lease_ttl_s)
        self.ckpts = CheckpointStore(ckpt_kv, objects, self.id)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="nats-replica", daemon=True)
        self._thread.start()
        log.info("replica %s: started (%d partitions, lease %.1f s)", self.id, nats.partitions, nats.lease_ttl_s)

    def stop(self) -> None:
        """Clean hand-over: a final checkpoint of every partition, then every lease released."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=30)
        self._thread = None
        with self._lock:
            workers = list(self.workers.values())
            self.workers.clear()
        for w in workers:
            w.stop(final_checkpoint=True, timeout_s=60)
        if self.leases is not None:
            try:
                self._beats().run(self.leases.release_all(), 30)
            except Exception as e:  # the leases expire after their TTL instead
                log.warning("replica %s: releasing leases: %s", self.id, e)
        if self._beat is not None:
            self._beat.close()
            self._beat = None
        if self._own_link:
            self.link.close()
        log.info("replica %s: stopped", self.id)

    def _loop(self) -> None:
        assert self.leases is not None
        period = self.settings.nats.lease_ttl_s / 3
        next_watch = time.monotonic() + WATCH_EVERY_S
        while True:
            started = time.monotonic()
            try:
                changes = self._beats().run(self.leases.heartbeat(), self.settings.nats.lease_ttl_s)
            except Exception as e:  # the heartbeat reports refusals itself; this is the link or the loop
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("replica %s: heartbeat failed: %s", self.id, why(e))
                changes = Changes()
            self._apply(changes)
            self._count_streams()
            if self.settings.models.watch and time.monotonic() >= next_watch:
                next_watch = time.monotonic() + WATCH_EVERY_S
                self._watch_models()
            if self._stop.wait(max(0.0, period - (time.monotonic() - started))):
                return

    def _apply(self, changes: Changes) -> None:
        assert self.leases is not None
        for p in changes.lost:
            self._stop_worker(p)
        held = dict(self.leases.held)
        for p, lease in held.items():
            w = self.workers.get(p)
            if w is not None and w.lease.epoch == lease.epoch and (w.alive() or w.fenced):
                continue  # working (a fenced one waits for its lease to go)
            self._start_worker(lease)  # gained, re-adopted under a new epoch, or its worker failed
        for p in [p for p in self.workers if p not in held]:  # dropped by check() between beats
            self._stop_worker(p)

    def _start_worker(self, lease: Lease) -> None:
        assert self.ckpts is not None
        p = lease.partition
        self._stop_worker(p)
        w = PartitionWorker(
            self.link, self.settings, p, lease, self.ckpts, self._registry, self.outputs,
            metrics=self.metrics, names=self.names, decoder=self.decoder, on_alert=self._on_alert,
            on_forecast=self._on_forecast, stream_rules=self._stream_rules,
            publish_forecasts=self.publish_forecasts, valid_until=lambda: self._valid_until(lease),
        )
        with self._lock:
            self.workers[p] = w
        w.start()
        log.info("replica %s: took partition %d (epoch %d)", self.id, p, lease.epoch)

    def _valid_until(self, lease: Lease) -> float:
        """Monotonic time up to which the worker of ``lease`` may still produce output."""
        leases = self.leases
        if leases is None or (self._stop.is_set() and self._thread is None):
            return float("inf")  # the clean stop's final checkpoint: leases are released after it
        return leases.deadline(lease.partition, lease.epoch)

    def _stop_worker(self, p: int) -> None:
        with self._lock:
            w = self.workers.pop(p, None)
        if w is None:
            return
        # Lost: a newer owner restores from the last checkpoint. Not waited for: a worker inside
        # a checkpoint must not hold up the heartbeat (the other leases); from now on it emits
        # nothing, and a save it still makes is refused by the new owner's claim.
        w.stop(final_checkpoint=False, timeout_s=0.0)
        if self.ckpts is not None:
            self.ckpts.forget(p)
        log.info("replica %s: gave up partition %d", self.id, p)

    def _count_streams(self) -> None:
        """The stream gauges, off the beat's thread: each engine's count waits for its tick to end
        (seconds per partition while catching up), and the beat that waited with it came too late
        to renew: the scale benchmark's replicas lost every lease. One count at a time."""
        if self._counter is None or not self._counter.is_alive():
            self._counter = threading.Thread(target=self._gauges, name="nats-replica-gauges", daemon=True)
            self._counter.start()

    def _gauges(self) -> None:
        """sensorcast_streams{status} of this replica: every partition's streams."""
        total = {"warming": 0, "ok": 0, "firing": 0}
        for e in self.engines():
            for status, n in e.status_counts().items():
                total[status] = total.get(status, 0) + n
        for status, n in total.items():
            self.metrics.streams.labels(status).set(n)

    def _watch_models(self) -> None:
        try:
            if self._registry.changed():
                log.info("models directory changed: %s", self.reload_models())
        except Exception:
            log.exception("model reload failed")

    # -- EngineLike: a facade over the partitions' engines -------------------------------------
    def engines(self) -> list[Engine]:
        with self._lock:
            return [w.engine for w in self.workers.values() if w.active]

    def partitions(self) -> dict[int, PartitionWorker]:
        with self._lock:
            return dict(self.workers)

    def accept(self, readings: Sequence[Reading]) -> None:
        """Readings come from the partitions' streams only (POST /v1/readings goes to a writer)."""

    def tick(self, now_ns: int | None = None) -> int:
        return 0  # each partition ticks itself, in event time

    def streams(self) -> list[StreamStatus]:
        out = [s for e in self.engines() for s in e.streams()]
        return sorted(out, key=lambda s: s.id)

    def streams_page(
        self, limit: int, after: str | None = None, status: str | None = None
    ) -> tuple[list[StreamStatus], str | None]:
        pages = []
        more = False
        for e in self.engines():
            page, nxt = e.streams_page(limit, after, status)
            pages.append(list(page))
            more = more or nxt is not None
        merged = list(heapq.merge(*pages, key=lambda s: s.id))
        more = more or len(merged) > limit
        out = merged[:limit]
        return out, (out[-1].id if more and out else None)

    def _first(self, call: Callable[[Engine], Any]) -> Any:
        for e in self.engines():
            got = call(e)
            if got is not None and got is not False:
                return got
        return None

    def stream(self, stream_id: str) -> StreamStatus | None:
        got: StreamStatus | None = self._first(lambda e: e.stream(stream_id))
        return got

    def forecast(self, stream_id: str) -> Forecast | None:
        got: Forecast | None = self._first(lambda e: e.forecast(stream_id))
        return got

    def lookup_forecast(self, stream_id: str) -> ForecastLookup | None:
        for e in self.engines():
            got = e.lookup_forecast(stream_id)
            if got is None or got.known:  # None: torn, the API asks forecast() instead
                return got
        return ForecastLookup(known=False)

    def predict(
        self, model: str, version: str | None, values: list[list[float | None]],
        timestamps_ns: list[int] | None = None, cadence: float | None = None,
    ) -> Forecast:
        return predict_history(self._registry, model, version, values, timestamps_ns, cadence)

    def models(self) -> list[ModelInfo]:
        counts: dict[str, int] = {}
        for e in self.engines():
            for info in e.models():
                key = f"{info.name}/{info.version}"
                counts[key] = counts.get(key, 0) + info.streams
        return report.model_infos(self._registry, {m.key: counts.get(f"{m.name}/{m.version}", 0)
                                                   for m in self._registry.all()})

    def reload_models(self) -> Mapping[str, list[str] | dict[str, str]]:
        answer = self._registry.reload()  # each engine moves its streams at its next tick
        return dict(answer)

    def recent_alerts(self, limit: int = 100, stream: str | None = None, state: str | None = None) -> list[Alert]:
        lists = [e.recent_alerts(limit, stream, state) for e in self.engines()]
        return list(heapq.merge(*lists, key=lambda a: -a.ts_ns))[:limit]

    def set_rules(self, stream_id: str, rules: StreamRules | None) -> None:
        for e in self.engines():  # where the stream lives now, and where it may appear
            e.set_rules(stream_id, rules)

    def rules_of(self, stream_id: str) -> tuple[StreamRules | None, ResolvedRules] | None:
        got: tuple[StreamRules | None, ResolvedRules] | None = self._first(lambda e: e.rules_of(stream_id))
        return got

    def forget_stream(self, stream_id: str) -> bool:
        found = False
        for w in self.partitions().values():
            if w.active and w.engine.forget_stream(stream_id):
                w.saved_seq = None  # saved at its next checkpoint even without new readings
                found = True
        return found

    def unserved(self) -> list[str]:
        return [sid for e in self.engines() for sid in e.unserved()]

    def checkpoint(self) -> int:
        return 0  # each partition checkpoints itself (to JetStream) on its own thread

    def restore(self) -> int:
        return 0  # each partition restores from its checkpoint when its lease is gained

    def close(self) -> None:
        """Nothing left: ``stop`` checkpointed every partition."""


def build_replica(
    settings: Settings,
    metrics: Metrics,
    on_alert: Callable[[Alert], None],
    on_forecast: Callable[[Forecast], None],
    stream_rules: Callable[[str], StreamRules | None] | None,
    outputs: Flushable | None,
    decoder: Decoder | None = None,
) -> Replica:
    """The inference role on NATS (``Pipeline.build``): the replica is the engine and its runner."""
    from service.nats.outputs import names_for
    from service.store.outputs import enabled as outputs_enabled

    registry = ModelRegistry(settings.models.dir, settings.models.threads, metrics)
    every_step = outputs_enabled(settings) and settings.store.outputs_interval_s == 0
    return Replica(
        settings, registry, metrics, names=names_for(settings), outputs=outputs, on_alert=on_alert,
        on_forecast=on_forecast, stream_rules=stream_rules, decoder=decoder,
        publish_forecasts=settings.alerts.forecast_topic is not None or every_step,
    )
