"""The inference engine: readings in; forecasts, scores and alerts out.

``accept()`` only buffers (cheap, thread-safe; the ingester's sink calls it). ``tick()``
runs the stages under one lock, each an object that owns its state:

    route     StreamSlots      (slots.py)          reading -> stream and row; binding, limits, eviction
    resample  BatchResampler   (resample_batch.py) readings -> buckets -> rounds of steps
    warm      Warmup           (warmup.py)         history for new and restored streams, off the lock
    step      ModelTable       (table.py)          one batched model call per lane and round
    score,    AnomalyStage     (anomaly_stage.py)  scores, then the M-of-N decision: fired/resolved rows
    decide
    emit      emit.py                              rows -> Alert / Forecast records -> the sinks

A lane (``lane.py``) is one model's rows across the stages. Stateless ``predict()``
(``predict.py``) rolls a fresh state over a given history and agrees with the live path
(tests/unit/test_engine.py). Read-outs are in ``report.py``, checkpoints in ``checkpoint.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from service.config import Settings, StreamRules
from service.metrics import Metrics
from service.records import Alert, Forecast, Reading, StreamKey
from service.runtime.registry import ModelRegistry
from service.store.base import Store
from service.streams import checkpoint, emit, report
from service.streams.binding import warn_no_models
from service.streams.inbox import Inbox
from service.streams.lane import Lane, Stream
from service.streams.predict import predict as predict_history
from service.streams.quality_stage import Flag
from service.streams.resample_batch import Batch, BatchResampler
from service.streams.rules import ResolvedRules, resolve
from service.streams.slots import StreamSlots
from service.streams.status import ForecastLookup, ModelInfo, StreamStatus
from service.streams.table import Expected, Stepped
from service.streams.warmup import Read, Warmup

log = logging.getLogger(__name__)

LEAVING = frozenset({"evicted", "model changed", "deleted"})  # the reasons a stream leaves its row (slots.drop)
SILENT_CHECK_NS = 1_000_000_000  # the silent watchdog runs about once a second (engine clock)


class Engine:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        store: Store | None,
        metrics: Metrics,
        on_alert: Callable[[Alert], None] | None = None,
        on_forecast: Callable[[Forecast], None] | None = None,
        stream_rules: Callable[[str], StreamRules | None] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.metrics = metrics
        self.on_alert, self.on_forecast = on_alert, on_forecast
        # Building a Forecast record per stream-step costs ~5-10 us (H tuples each, plus GC
        # pressure): only when forecasts are wanted (the pipeline also sets this for its cache).
        self.publish_forecasts = settings.alerts.forecast_topic is not None
        self._lock = threading.RLock()
        self._tick_lock = threading.Lock()  # one tick at a time (a tick lets go of _lock while the store answers)
        self._checkpoint_lock = threading.Lock()
        self._inbox = Inbox(settings.streams.max_buffered, metrics)
        self._warm = Warmup(settings, store, self._drop_firing)
        # Per-stream alert rules: set over the API (``set_rules``) or looked up by id
        # (``stream_rules``: the persisted ones) when a stream appears.
        self._stream_rules = stream_rules
        self._own_rules: dict[str, StreamRules | None] = {}
        self._slots = StreamSlots(settings, registry, metrics, self._warm, self._drop_firing, self._configure)
        self._resampler = BatchResampler(settings, metrics)
        self._lanes = self._slots.lanes  # the slots' dicts, under shorter names
        self._streams = self._slots.streams
        self._alerts: deque[Alert] = deque(maxlen=1000)
        self._generation = registry.generation
        self._gauges_at = 0.0
        self.status_gauges = True  # False: the owner sets sensorcast_streams (a replica sums its partitions')
        self._silent_at = 0  # engine clock of the next silent check

    # ------------------------------------------------------------ intake

    def accept(self, readings: Sequence[Reading]) -> None:
        """Buffer readings for the next tick (thread-safe, O(len)); bounded by streams.max_buffered."""
        self._inbox.put(readings)

    def pending(self) -> int:
        return len(self._inbox)

    def status_counts(self) -> dict[str, int]:
        with self._lock:
            return self._slots.status_counts()

    def unfed(self) -> dict[StreamKey, int]:
        """Reading key -> its stream's oldest reading in an open bucket (not in a checkpoint: NATS
        replicas replay it)."""
        with self._lock:
            return report.unfed(self._lanes)

    def use_event_time(self, clock_ns: int) -> None:
        """``tick(now_ns)`` gets event time (service/nats/partition.py): activity is a reading's own time,
        and the silent watchdog looks at whole seconds after ``clock_ns``, like the checkpoint's engine."""
        self._resampler.event_time = True
        with self._lock:
            for lane in self._lanes.values():
                restored = lane.occupied & (lane.seen < 0)
                lane.seen[restored] = lane.pos.last_fed_ts[restored]
        self._silent_at = (clock_ns // SILENT_CHECK_NS + 1) * SILENT_CHECK_NS if clock_ns else 0

    # ------------------------------------------------------------ the tick

    def tick(self, now_ns: int | None = None) -> int:
        """Process buffered readings: route, resample, warm, step, score, decide, emit."""
        with self._tick_lock:
            now = time.time_ns() if now_ns is None else now_ns
            readings = self._inbox.take()
            with self._lock:
                done, reads = self._tick_locked(readings, now)
            if not reads:
                return done
            # Store reads for new/restored streams, without the lock: API reads and the
            # other streams (stepped above) do not wait for the database.
            self._warm.submit(reads)
            if self._warm.wait(reads, self.settings.streams.warmup_wait_s):
                with self._lock:  # answered in time: those streams start in this tick
                    self._warm.apply(self._resampler)
                    done += self._advance(time.time_ns() if now_ns is None else now_ns)
            return done

    def _tick_locked(self, readings: list[Reading], now: int) -> tuple[int, list[Read]]:
        self._sync_models()
        self._warm.apply(self._resampler)  # history answered since the last tick
        routed = self._slots.route(readings)  # route
        self._resampler.feed(routed, now, self._slots.by_uid)  # resample
        reads = self._warm.plan(self._resampler, now)  # warm: new and restored streams wait for history
        done = self._advance(now)  # step, score, decide, emit
        self._slots.evict_idle(now)  # after intake: this tick's readings count as activity
        if now >= self._silent_at:  # the silent watchdog: no reading needed to notice silence
            self._silent_at = (now // SILENT_CHECK_NS + 1) * SILENT_CHECK_NS  # whole seconds: replays check alike
            for lane in self._lanes.values():
                # Only established streams (warm) can go silent: a topic seen once, or a
                # flood of one-off topics, must not leave a silent alert per topic.
                rows = np.flatnonzero(lane.occupied & (lane.table.warm_have >= lane.table.warm_need))
                if rows.size:
                    found = lane.quality.silent(rows, lane.seen[rows], now)
                    if found.fired:
                        self._emit(emit.quality_alerts(lane, found))
        if self.status_gauges and time.monotonic() - self._gauges_at > 1.0:  # sensorcast_streams{status}
            self._gauges_at = time.monotonic()
            for status, n in self._slots.status_counts().items():
                self.metrics.streams.labels(status).set(n)
        return done, reads

    def _advance(self, now: int) -> int:
        """Every round of steps the resampler has: step -> score -> decide -> emit."""
        done = 0
        for batch in self._resampler.take(now, self._slots.by_uid):
            lane = batch.lane
            for st in batch.restarts:  # a gap too long to bridge: the stream starts over
                self._drop_firing(st, "gap")
                lane.reset(np.array([st.row], np.intp))
            quality = lane.quality.assess(batch.rows, batch.buckets * lane.cadence_ns, batch.x)  # raw readings
            x = batch.x
            if quality.invalid.any():  # out of range, impossible rate: never into the state
                x = np.where(quality.invalid, np.float32(np.nan), x)
            pre = lane.table.expect(batch.rows)
            gate = lane.anomaly.gate(batch.rows, x, pre)  # evidence; anomalies kept out of the state
            stepped = self._step(batch, gate.x, pre)  # kept-out readings are fed as missing
            if quality.fired or quality.resolved:
                self._emit(emit.quality_alerts(lane, quality))
                self._hold(lane, quality.fired)
            if stepped is None:
                continue
            if stepped.restarted.size:  # a non-finite state: those streams start over
                self._emit(emit.resolutions(lane, stepped.restarted, "restart"))
            verdicts = lane.anomaly.assess(stepped, gate, quality.hold)  # decide; data quality holds ML alerts
            if verdicts.accepted.size:  # a new level: re-baseline from the recent readings
                acc = verdicts.accepted
                lane.table.replay(acc, lane.anomaly.recent[acc], stepped.ts[np.isin(stepped.rows, acc)])
            if verdicts.fired.size or verdicts.resolved.size:
                self._emit(emit.alerts(lane, verdicts))
            self._emit(emit.breach_step(lane, stepped, gate.spread, batch.x))  # predicted crossings of limits
            if self.on_forecast is not None and self.publish_forecasts:
                for f in emit.forecasts(lane, stepped.rows):
                    try:
                        self.on_forecast(f)
                    except Exception:  # a failing sink must not stop inference
                        log.exception("on_forecast failed for %s", f.stream_id)
            done += len(batch.rows)
        return done

    def _hold(self, lane: Lane, fired: Sequence[Flag]) -> None:
        """A data-quality alert explains the stream's anomaly alert: a firing one resolves
        (reason held, held_by the check), and none fires while the check does."""
        rows = np.unique(np.array([f.row for f in fired], np.intp))
        firing = rows[lane.anomaly.decider.firing[rows]]
        if firing.size:
            by = {f.row: f.check for f in fired}
            for row in firing.tolist():
                self._emit(emit.resolutions(lane, np.array([row], np.intp), "held", {"held_by": by[row]}))
            lane.anomaly.decider.reset(firing)

    def _step(self, batch: Batch, x: npt.NDArray[np.float32], pre: Expected) -> Stepped | None:
        lane = batch.lane
        t0 = time.perf_counter()
        try:
            stepped = lane.table.step(batch.rows, batch.buckets, x, pre, batch.x)
        except Exception:  # one model failing must not stop the others; its streams re-warm
            log.exception("model %s failed a step of %d streams: they re-warm", lane.model.key, len(batch.rows))
            self.metrics.model_errors.inc()
            self._emit(emit.resolutions(lane, batch.rows, "model_error"))
            lane.reset(batch.rows)
            return None
        self.metrics.step_latency.labels(lane.model.name).observe(time.perf_counter() - t0)
        self.metrics.steps.labels(lane.model.name).inc(len(batch.rows))
        return stepped

    def _emit(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            self._alerts.append(alert)
            self.metrics.alerts.labels(alert.state).inc()
            if self.on_alert is not None:
                try:
                    self.on_alert(alert)
                except Exception:  # a failing sink must not stop inference
                    log.exception("on_alert failed for %s", alert.stream_id)

    def _drop_firing(self, st: Stream, reason: str) -> None:
        """A firing stream that starts over or leaves resolves, saying why (its
        data-quality alerts only when it leaves: they judge readings, not the model)."""
        rows = np.array([st.row], np.intp)
        self._emit(emit.resolutions(st.lane, rows, reason))
        if reason in LEAVING:
            self._emit(emit.quality_resolutions(st.lane, rows, reason))
            st.lane.quality.drop(rows)

    # ------------------------------------------------------------ models

    def _sync_models(self) -> None:
        """After a registry change: streams whose model changed move (they re-warm)."""
        if self.registry.generation != self._generation:
            self._generation = self.registry.generation
            self._slots.sync_models()
            self.log_models()

    def log_models(self) -> None:
        """The model-to-stream summary (at start, after each reload); WARNING: no model loaded."""
        warn_no_models(self.registry)
        with self._lock:
            log.info("models: %s", self._slots.summary())

    def forget_stream(self, stream_id: str) -> bool:
        """DELETE /v1/streams/{id} (``StreamSlots.forget``); False: unknown id. The checkpoint
        is rewritten at once: a restart must not bring the stream back."""
        with self._lock:
            found = self._slots.forget(stream_id)
        if found:
            try:
                self.checkpoint()
            except OSError as e:  # the next periodic checkpoint tries again
                log.error("checkpoint after deleting %s failed: %s", stream_id, e)
        return found

    def unserved(self) -> list[str]:
        """Stream ids seen with no model to serve them (bounded, oldest first)."""
        with self._lock:
            return list(self._slots.unserved)

    def reload_models(self) -> dict[str, Any]:
        """Re-scan the models directory now; streams of changed models re-warm."""
        answer = self.registry.reload()
        with self._lock:
            self._sync_models()
        return dict(answer)

    def models(self) -> list[ModelInfo]:
        with self._lock:
            counts = {lane.model.key: lane.used for lane in self._lanes.values()}
        return report.model_infos(self.registry, counts)

    # ------------------------------------------------------------ queries

    def snapshot(self, stream_ids: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        """Vectorised ``stream()`` for many ids: arrays aligned with ``stream_ids`` (keys in
        report.py). The backtest reads it after every tick."""
        out = report.empty_snapshot(len(stream_ids))
        with self._lock:
            report.gather(self._streams, stream_ids, out)
        return out

    def streams(self) -> list[StreamStatus]:
        """Every stream, by id. Numbers are gathered under the lock in bulk; the records are
        built after releasing it (100k streams must not stall the tick for a second)."""
        return report.every_status(self._streams, self._lock)

    def streams_page(
        self, limit: int, after: str | None = None, status: str | None = None
    ) -> tuple[list[StreamStatus], str | None]:
        """Up to ``limit`` streams with ids after ``after`` (in id order), optionally only
        those in ``status``; and the id to continue after (None: nothing further).

        Ids are sorted outside the lock (cached until streams come or go); the lock is
        taken per chunk of ids, only to gather their numbers.
        """
        ids, i = self._slots.ids_after(after, self._lock)
        return report.page(self._streams, ids, i, limit, status, self._lock, self._slots.unserved)

    def stream(self, stream_id: str) -> StreamStatus | None:
        return report.status_of(self._streams, stream_id, self._lock, self._slots.unserved)

    def forecast(self, stream_id: str) -> Forecast | None:
        """The latest stateful forecast (None while warming or unknown)."""
        with self._lock:
            st = self._streams.get(stream_id)
            return None if st is None else emit.forecast_of(st)

    def lookup_forecast(self, stream_id: str) -> ForecastLookup | None:
        """The latest forecast without the engine's lock, for the API's event loop.

        A tick holds the lock for milliseconds (~0.2 s of CPU at 100k streams); a forecast
        is a few rows under the table's seqlock. None: a write overlapped every try, use ``forecast()``.
        """
        return report.lookup_forecast(self._streams, stream_id)

    def recent_alerts(self, limit: int = 100, stream: str | None = None, state: str | None = None) -> list[Alert]:
        """Newest first."""
        with self._lock:
            return report.newest(self._alerts, limit, stream, state)

    def set_threshold(self, stream_id: str, threshold: float | None) -> None:
        """Per-stream threshold override (None: back to the model/settings default)."""
        with self._lock:
            st = self._streams.get(stream_id)
            if st is None:
                raise KeyError(stream_id)
            st.lane.anomaly.decider.set_threshold(st.row, threshold)

    # ------------------------------------------------------------ per-stream rules

    def _own(self, stream_id: str) -> StreamRules | None:
        if stream_id in self._own_rules:
            return self._own_rules[stream_id]
        return None if self._stream_rules is None else self._stream_rules(stream_id)

    def _resolved(self, st: Stream) -> ResolvedRules:
        m = st.lane.model.manifest
        return resolve(self.settings.anomaly, st.binding_rules, self._own(st.id), m.features, m.cadence_s)

    def _configure(self, st: Stream) -> None:
        st.lane.configure(np.array([st.row], np.intp), [self._resolved(st)])

    def set_rules(self, stream_id: str, rules: StreamRules | None) -> None:
        """The stream's own alert rules (None: inherit the binding's and the settings').
        Applies now to a known stream, and when an unknown one appears."""
        with self._lock:
            self._own_rules[stream_id] = rules
            st = self._streams.get(stream_id)
            if st is not None:
                self._configure(st)

    def rules_of(self, stream_id: str) -> tuple[StreamRules | None, ResolvedRules] | None:
        """(own rules, effective rules) of a known stream; None when unknown."""
        with self._lock:
            st = self._streams.get(stream_id)
            if st is None:
                return None
            return self._own(stream_id), self._resolved(st)

    # ------------------------------------------------------------ stateless predict

    def predict(
        self, model: str, version: str | None, values: list[list[float | None]],
        timestamps_ns: list[int] | None = None, cadence: float | None = None,
    ) -> Forecast:
        """Forecast from a given history with a fresh state (see ``predict.predict``).

        Raises ModelError for an unknown model/version, ValueError when the history does
        not fit the model (feature count, lengths, order of timestamps, cadence).
        """
        return predict_history(self.registry, model, version, values, timestamps_ns, cadence)

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self) -> int:
        """Write every lane's state to ``settings.streams.checkpoint_dir``; returns streams saved.

        Rows are copied under the lock (fast); the files are written after releasing it,
        so ticks and API reads do not wait for the disk. Concurrent calls are serialised.
        """
        with self._lock:
            taken = checkpoint.take(self._lanes)  # copies
        with self._checkpoint_lock:
            return checkpoint.save(self.settings.streams.checkpoint_dir, taken)

    def restore(self) -> int:
        """Load checkpoints whose model still matches; returns streams restored."""
        directory = self.settings.streams.checkpoint_dir
        with self._lock:
            n = checkpoint.restore(directory, self.registry, self._slots, self._warm.restored_stream)
        self.log_models()  # at start: which model serves what (restored streams included)
        return n

    def close(self) -> None:
        """Final checkpoint (shutdown)."""
        try:
            self.checkpoint()
        except OSError as e:
            log.error("final checkpoint failed: %s", e)
