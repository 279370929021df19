"""The inference engine: readings in; forecasts, scores and alerts out.

``accept()`` only buffers (cheap, thread-safe; the ingester's sink calls it). ``tick()``
does the work under one lock: route each reading to its stream (``slots.py``: binding,
table rows, limits, eviction), resample it (``resample.py``), then step every due stream
of a model in batched calls (a stream with several due buckets takes one per round),
score, decide and emit alerts through ``on_alert``. New and restored streams get their
history from the store off the lock (``warmup.py``).

Stateless ``predict()`` (``predict.py``) rolls a fresh state over a given history and
agrees with the live path (tests/unit/test_engine.py). Read-outs are in ``report.py``,
the per-stream bucket policy in ``resample.py``, the batched step in ``table.py``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from service.arrays import F32, I64, IntArr
from service.config import Settings
from service.errors import ModelError
from service.metrics import Metrics
from service.records import NS_PER_S, Alert, AlertState, Forecast, Reading, StreamKey
from service.runtime.registry import LoadedModel, ModelRegistry
from service.store.base import Store
from service.streams import checkpoint, report
from service.streams.binding import route
from service.streams.predict import predict as predict_history
from service.streams.resample import Resampler, Step, live_window_ns
from service.streams.slots import Stream, StreamSlots, table_name
from service.streams.status import ForecastLookup, ModelInfo, StreamStatus
from service.streams.table import ModelTable
from service.streams.warmup import Warmup

log = logging.getLogger(__name__)

_MISSING = object()
_F32_MAX = float(np.finfo(np.float32).max)


class Engine:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        store: Store | None,
        metrics: Metrics,
        on_alert: Callable[[Alert], None] | None = None,
        on_forecast: Callable[[Forecast], None] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.metrics = metrics
        self.on_alert = on_alert
        self.on_forecast = on_forecast
        # Building a Forecast record per stream-step costs ~5-10 us (H tuples each, plus GC
        # pressure): only when forecasts are wanted (the pipeline also sets this for its cache).
        self.publish_forecasts = settings.alerts.forecast_topic is not None
        self._lock = threading.RLock()
        self._tick_lock = threading.Lock()  # one tick at a time (a tick lets go of _lock while the store answers)
        self._inbox_lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._inbox: list[Reading] = []
        self._warm = Warmup(settings, store, self._drop_firing)
        self._slots = StreamSlots(settings, registry, metrics, self._warm, self._drop_firing)
        self._tables = self._slots.tables  # the slots' dicts, under shorter names
        self._streams = self._slots.streams
        self._by_uid = self._slots.by_uid
        self._alerts: deque[Alert] = deque(maxlen=1000)
        self._generation = registry.generation
        self._waiting: dict[int, list[Stream]] = {}  # due time (ns) -> streams with pending buckets
        self._drops = {
            r: metrics.late_dropped.labels(r) for r in ("late", "duplicate", "not_finite", "future", "overload")
        }
        self._max_buffered = settings.streams.max_buffered
        self._overload_logged = 0.0
        self._gauges_at = 0.0
        self._future_ns = round(settings.streams.max_future_s * NS_PER_S)
        self._grace_ns = round(settings.streams.close_grace_s * NS_PER_S)

    # ------------------------------------------------------------ intake

    def accept(self, readings: Sequence[Reading]) -> None:
        """Buffer readings for the next tick (thread-safe, O(len)); bounded by streams.max_buffered."""
        with self._inbox_lock:
            room = self._max_buffered - len(self._inbox)
            if len(readings) <= room:
                self._inbox.extend(readings)
                return
            self._inbox.extend(readings[: max(room, 0)])
            lost = len(readings) - max(room, 0)
        self._drops["overload"].inc(lost)
        now = time.monotonic()
        if now - self._overload_logged > 10:  # one line per 10 s, not one per batch
            self._overload_logged = now
            log.warning("engine is behind: %d buffered readings, dropped %d for inference", self._max_buffered, lost)

    def pending(self) -> int:
        with self._inbox_lock:
            return len(self._inbox)

    # ------------------------------------------------------------ the tick

    def tick(self, now_ns: int | None = None) -> int:
        """Process buffered readings: resample, step due streams in batches, score, decide, emit."""
        with self._tick_lock:
            now = time.time_ns() if now_ns is None else now_ns
            with self._inbox_lock:
                readings, self._inbox = self._inbox, []
            with self._lock:
                done, reads = self._tick_locked(readings, now)
            if not reads:
                return done
            # Store reads for new/restored streams, without the lock: API reads and the
            # other streams (stepped above) do not wait for the database.
            self._warm.submit(reads)
            if self._warm.wait(reads, self.settings.streams.warmup_wait_s):
                with self._lock:  # answered in time: those streams start in this tick
                    slow: dict[str, Stream] = {}
                    self._warm.apply(slow, self._slow_begin)
                    done += self._run({}, slow, time.time_ns() if now_ns is None else now_ns)
            return done

    def _tick_locked(self, readings: list[Reading], now: int) -> tuple[int, list[Any]]:
        if self.registry.generation != self._generation:
            self._sync_models()
        slow: dict[str, Stream] = {}
        fast: dict[int, tuple[IntArr, I64, F32]] = {}
        self._warm.apply(slow, self._slow_begin)  # history answered since the last tick
        routes: dict[StreamKey, Any] = self._slots.routes  # a hit, or None: unrouted or refused
        bind = self._slots.bind
        hits: list[tuple[int, int, int, Stream]] = []
        tss: list[int] = []
        vals: list[float] = []
        for r in readings:
            found = routes.get(r.stream, _MISSING)
            hit = bind(r.stream) if found is _MISSING else found
            if hit is not None:
                hits.append(hit)
                tss.append(r.ts_ns)
                vals.append(r.value)
        if hits:
            self._intake(hits, tss, vals, now, fast, slow)
        reads = self._warm.plan(slow, now, self._slow_begin)
        # Streams whose pending buckets may have become due by the clock alone.
        for due in [d for d in self._waiting if d <= now]:
            for st in self._waiting.pop(due):
                if st.table.has_pending[st.row] and self._streams.get(st.id) is st:
                    slow.setdefault(st.id, st)
        done = self._run(fast, slow, now)
        self._slots.evict_idle(now)  # after intake: this tick's readings count as activity
        if time.monotonic() - self._gauges_at > 1.0:
            self._update_gauges()
        return done, reads

    def _update_gauges(self) -> None:
        """sensorcast_streams{status}: counted from the table arrays (cheap at 100k rows)."""
        self._gauges_at = time.monotonic()
        counts = {"warming": 0, "ok": 0, "firing": 0}
        for t in self._tables.values():
            occupied = t.occupied
            firing = occupied & t.decider.firing
            warming = occupied & ~firing & (t.warm_have < t.warm_need)
            counts["firing"] += int(firing.sum())
            counts["warming"] += int(warming.sum())
            counts["ok"] += int(occupied.sum()) - int(firing.sum()) - int(warming.sum())
        for status, n in counts.items():
            self.metrics.streams.labels(status).set(n)

    def _slow_begin(self, st: Stream, slow: dict[str, Stream]) -> None:
        """Hand the stream's position to its Resampler for this tick (unless it holds it)."""
        if st.id in slow:
            return
        slow[st.id] = st
        t, row = st.table, st.row
        if st.res is None:
            s = self.settings.streams
            st.res = Resampler(t.cadence_ns, t.n_in, s.late_tolerance_steps, s.max_gap_steps, self._grace_ns)
        if not t.has_pending[row]:
            nb = int(t.next_bucket[row])
            st.res.restore(None if nb < 0 else nb, int(t.last_fed_ts[row]))

    def _intake(
        self,
        hits: list[tuple[int, int, int, Stream]],
        tss: list[int],
        vals: list[float],
        now: int,
        fast: dict[int, tuple[IntArr, I64, F32]],
        slow: dict[str, Stream],
    ) -> None:
        """Vectorised resampling for the common case; everything else via the Resampler.

        Fast path (per reading): a univariate stream with nothing pending, one reading in
        this tick, in exactly the next bucket, and that bucket has ended by the clock. It
        is stepped straight from arrays. Late/duplicate readings are counted drops.
        """
        n = len(hits)
        uid = np.fromiter((h[0] for h in hits), np.int64, n)
        rows_all = np.fromiter((h[1] for h in hits), np.intp, n)
        try:
            ts_all = np.fromiter(tss, np.int64, n)
        except OverflowError:  # a timestamp beyond int64: drop it ("future"), keep the rest
            fits = [i for i, t in enumerate(tss) if -(2**63) <= t < 2**63]
            self._drops["future"].inc(n - len(fits))
            hits, tss, vals = [hits[i] for i in fits], [tss[i] for i in fits], [vals[i] for i in fits]
            if not hits:
                return
            self._intake(hits, tss, vals, now, fast, slow)
            return
        v_all = np.fromiter(vals, np.float64, n)
        uids = np.unique(uid)
        for u in uids.tolist():
            idx = np.arange(n) if uids.size == 1 else np.flatnonzero(uid == u)
            table = self._by_uid[u]
            rows, ts, v = rows_all[idx], ts_all[idx], v_all[idx]
            table.seen[rows] = now  # for idle eviction (one vector write per table and tick)
            # float32 is what the model sees: 1e39 is finite here but inf there.
            finite = np.abs(v) < _F32_MAX  # NaN compares False
            future = ts > now + self._future_ns
            if future.any():
                self._drops["future"].inc(int((future & finite).sum()))
                finite &= ~future
            buckets = -(-ts // table.cadence_ns)
            # The wall clock for live readings, the reading's own time for a backlog (see
            # Resampler.stream_clock): a backlog bucket is fed when a later reading comes.
            live_ns = live_window_ns(table.cadence_ns, self.settings.streams.late_tolerance_steps, self._grace_ns)
            clock = np.where(ts >= now - live_ns, now, ts) // table.cadence_ns
            nb = table.next_bucket[rows]
            late = finite & (nb >= 0) & (buckets < nb)
            dup = late & (ts == table.last_fed_ts[rows])
            if not finite.all():
                self._drops["not_finite"].inc(int((~finite & ~future).sum()))
            if late.any():
                n_dup = int(dup.sum())
                if n_dup:
                    self._drops["duplicate"].inc(n_dup)
                if int(late.sum()) > n_dup:
                    self._drops["late"].inc(int(late.sum()) - n_dup)
            keep = finite & ~late
            # A row goes fast when this tick brings exactly one reading per feature, all in
            # the next bucket, that bucket has ended, and nothing else is pending.
            cap, f_in = table.capacity, table.n_in
            due = keep & (buckets == nb) & (buckets <= clock) & ~table.has_pending[rows]
            n_keep = np.bincount(rows[keep], minlength=cap)
            n_due = np.bincount(rows[due], minlength=cap)
            feats = np.zeros(0, np.int64)
            if f_in == 1:
                row_ok = (n_keep == 1) & (n_due == 1)
            else:
                feats = np.fromiter((hits[j][2] for j in idx.tolist()), np.int64, len(idx))
                pairs = np.unique(rows[due].astype(np.int64) * f_in + feats[due])
                distinct = np.bincount(pairs // f_in, minlength=cap)
                row_ok = (n_keep == f_in) & (n_due == f_in) & (distinct == f_in)
            go = due & row_ok[rows]
            if go.any():
                if f_in == 1:
                    fr, fb = rows[go], buckets[go]
                    x = v[go].astype(np.float32)[:, None]  # (B, 1)
                    last_ts = ts[go]
                else:
                    fr = np.unique(rows[go])
                    pos = np.searchsorted(fr, rows[go])
                    fb = np.empty(len(fr), np.int64)
                    fb[pos] = buckets[go]
                    x = np.full((len(fr), f_in), np.nan, np.float32)  # (B, F)
                    x[pos, feats[go]] = v[go]
                    last_ts = np.zeros(len(fr), np.int64)
                    np.maximum.at(last_ts, pos, ts[go])
                table.next_bucket[fr] = fb + 1
                table.last_fed_ts[fr] = last_ts
                fast[u] = (fr, fb, x)
            for i in np.flatnonzero(keep & ~go).tolist():
                j = int(idx[i])
                st = hits[j][3]
                self._slow_begin(st, slow)
                reason = st.res.add(tss[j], hits[j][2], vals[j])  # type: ignore[union-attr]
                if reason is not None:
                    self._drops[reason].inc()

    def _run(self, fast: dict[int, tuple[IntArr, I64, F32]], slow: dict[str, Stream], now: int) -> int:
        queues: dict[int, list[tuple[Stream, list[Step]]]] = {}
        for st in slow.values():
            res = st.res
            assert res is not None  # streams in `slow` have one
            t, row = st.table, st.row
            if st.ticket:  # history read in flight: its readings wait in res (warmup.py)
                t.has_pending[row] = True
                continue
            steps = res.ready(now)
            nb = res.next_bucket
            t.next_bucket[row] = -1 if nb is None else nb
            t.last_fed_ts[row] = res.last_fed_ts
            if res.pending:
                t.has_pending[row] = True
                self._waiting.setdefault(res.due_after(now), []).append(st)
            else:
                t.has_pending[row] = False
                st.res = None  # the table arrays hold the position again
            if steps:
                queues.setdefault(t.uid, []).append((st, steps))
        done = 0
        for u in set(fast) | set(queues):
            table = self._by_uid[u]
            queue = queues.get(u, [])
            first = fast.get(u)
            rnd = 0
            while queue or first is not None:
                batch = [(st, steps[rnd]) for st, steps in queue]
                done += self._step_batch(table, batch, first)
                first = None
                rnd += 1
                queue = [(st, steps) for st, steps in queue if len(steps) > rnd]
        return done

    def _step_batch(
        self, table: ModelTable, batch: list[tuple[Stream, Step]], first: tuple[IntArr, I64, F32] | None
    ) -> int:
        rows = np.fromiter((st.row for st, _ in batch), np.intp, len(batch))
        buckets = np.fromiter((s.bucket for _, s in batch), np.int64, len(batch))
        x = np.array([s.values for _, s in batch], np.float32).reshape(len(batch), table.n_in)  # (B, F)
        for st, s in batch:
            if s.reset:
                self._drop_firing(st, "gap")
                table.reset(np.array([st.row], np.intp))
        if first is not None:
            rows = np.concatenate([first[0], rows])
            buckets = np.concatenate([first[1], buckets])
            x = np.concatenate([first[2], x])
        t0 = time.perf_counter()
        name = table.model.name
        poisoned = table.poisoned
        try:
            outcome = table.step(rows, buckets, x)
            if table.poisoned != poisoned:
                log.warning("model %s returned a non-finite state for %d streams: they re-warm",
                            table.model.key, table.poisoned - poisoned)
        except Exception:  # one model failing must not stop the others; its streams re-warm
            log.exception("model %s failed a step of %d streams: they re-warm", table.model.key, len(rows))
            self.metrics.model_errors.inc()
            table.reset(rows)
            return 0
        self.metrics.step_latency.labels(name).observe(time.perf_counter() - t0)
        self.metrics.steps.labels(name).inc(len(rows))
        if outcome.fired.size or outcome.resolved.size:
            owners = table.owners
            for row in outcome.fired.tolist():
                self._emit(owners[row], "firing", int(table.last_bucket[row]) * table.cadence_ns, warm=True,
                           extra=report.onset_extra(table, row))
            for row in outcome.resolved.tolist():
                self._emit(owners[row], "resolved", int(table.last_bucket[row]) * table.cadence_ns, warm=True)
        if self.on_forecast is not None and self.publish_forecasts:
            self._publish_forecasts(table, rows)
        return len(rows)

    def _publish_forecasts(self, table: ModelTable, rows: IntArr) -> None:
        """One Forecast per warm stepped row, built from whole-batch arrays (not per-row numpy)."""
        assert self.on_forecast is not None
        fresh = (table.warm_have[rows] >= table.warm_need) & (table.fc_age[rows] == 0)  # window models: new ones only
        rows = rows[fresh]
        if rows.size == 0:
            return
        m = table.model.manifest
        means = table.fc[rows].astype(np.float64).tolist()  # (B, H, Fo) nested lists
        scales = table.sc[rows].astype(np.float64).tolist() if table.has_scale else None
        stamps = (table.last_bucket[rows] * table.cadence_ns).tolist()
        feats = tuple(m.output_features)
        owners = table.owners
        for i, row in enumerate(rows.tolist()):
            f = Forecast(
                stream_id=owners[row].id, ts_ns=stamps[i], cadence_s=m.cadence_s, features=feats,
                mean=tuple(map(tuple, means[i])), scale=None if scales is None else tuple(map(tuple, scales[i])),
                model=table.model.name, model_version=table.model.version,
            )
            try:
                self.on_forecast(f)
            except Exception:  # a failing sink must not stop inference
                log.exception("on_forecast failed for %s", f.stream_id)

    def _drop_firing(self, st: Stream, reason: str) -> None:
        if st.table.decider.firing[st.row]:
            self._emit(st, "resolved", int(st.table.last_bucket[st.row]) * st.table.cadence_ns, warm=False,
                       extra={"reason": reason})

    def _emit(self, st: Stream, state: AlertState, ts_ns: int, warm: bool, extra: dict[str, str] | None = None) -> None:
        t = st.table
        j = int(t.top_feature[st.row]) if t.n_out > 1 else 0
        lower, upper = t.band(st.row, j)
        i_in = int(t.out_in[j])
        alert = Alert(
            stream_id=st.id,
            device=st.device,
            quantity=t.model.manifest.output_features[j] if st.quantity == "*" else st.quantity,
            state=state,
            ts_ns=ts_ns,
            value=float(t.last_x[st.row, i_in]) if i_in >= 0 else math.nan,
            expected=float(t.expected[st.row, j]),
            lower=lower,
            upper=upper,
            score=float(t.score[st.row]),
            model=t.model.name,
            model_version=t.model.version,
            warm=warm,
            extra=extra or {},
        )
        self._alerts.append(alert)
        self.metrics.alerts.labels(state).inc()
        if self.on_alert is not None:
            try:
                self.on_alert(alert)
            except Exception:  # a failing sink must not stop inference
                log.exception("on_alert failed for %s", st.id)

    # ------------------------------------------------------------ models

    def _sync_models(self) -> None:
        """After a registry change: move streams whose model changed (they re-warm)."""
        self._generation = self.registry.generation
        self._slots.clear_routes()
        for st in list(self._streams.values()):
            rt = route(st.keys[0], self.registry, self.settings.models.bindings)
            if rt is not None and rt.stream_id == st.id and rt.model is st.table.model:
                continue
            keys = st.keys
            self._slots.drop(st, reason="model changed")
            if rt is not None:
                for k in keys:
                    self._slots.bind(k)
        live = {table_name(st.table.model) for st in self._streams.values()}
        for name in list(self._tables):
            if name not in live:
                self._by_uid.pop(self._tables.pop(name).uid, None)

    def reload_models(self) -> dict[str, Any]:
        """Re-scan the models directory now; streams of changed models re-warm."""
        report = self.registry.reload()
        with self._lock:
            if self.registry.generation != self._generation:
                self._sync_models()
        return dict(report)

    def models(self) -> list[ModelInfo]:
        with self._lock:
            counts = {t.model.key: t.used for t in self._tables.values()}
        out = []
        for m in self.registry.all():
            mf = m.manifest
            out.append(ModelInfo(
                name=m.name, version=m.version, kind=mf.kind, cell=mf.cell, features=tuple(mf.features),
                output_features=tuple(mf.output_features), time_features=tuple(mf.time_features),
                cadence_s=mf.cadence_s, horizon=mf.horizon, warmup_steps=mf.warmup_steps,
                probabilistic=mf.probabilistic, default_threshold=mf.default_threshold, sha256=mf.sha256,
                created_at=mf.created_at.isoformat(), streams=counts.get(m.key, 0), metrics=mf.metrics,
            ))
        return out

    # ------------------------------------------------------------ queries

    def snapshot(self, stream_ids: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        """Vectorised ``stream()`` for many ids: arrays aligned with ``stream_ids``.

        Keys: ``known``, ``warm``, ``firing`` (bool); ``last_ts_ns`` (int64, -1 when nothing
        fed); ``value``, ``expected``, ``lower``, ``upper``, ``score`` (float64, NaN when
        unknown or unscored). The backtest reads it after every tick.
        """
        out = report.empty_snapshot(len(stream_ids))
        with self._lock:
            self._snapshot_locked(stream_ids, out)
        return out

    def _snapshot_locked(self, stream_ids: Sequence[str], out: dict[str, npt.NDArray[Any]]) -> None:
        groups: dict[int, tuple[ModelTable, list[int], list[int]]] = {}
        for i, sid in enumerate(stream_ids):
            st = self._streams.get(sid)
            if st is not None:
                g = groups.setdefault(st.table.uid, (st.table, [], []))
                g[1].append(i)
                g[2].append(st.row)
        for t, idx_list, row_list in groups.values():
            report.fill_snapshot(out, t, np.array(idx_list, np.intp), np.array(row_list, np.intp))

    def streams(self) -> list[StreamStatus]:
        """Every stream, by id. Numbers are gathered under the lock in bulk; the records are
        built after releasing it (100k streams must not stall the tick for a second)."""
        with self._lock:
            items = sorted(self._streams.values(), key=lambda s: s.id)
            meta = [(st.id, st.device, st.quantity, st.table.model) for st in items]
            snap = report.empty_snapshot(len(items))
            self._snapshot_locked([m[0] for m in meta], snap)
        return report.statuses(meta, snap)

    def streams_page(
        self, limit: int, after: str | None = None, status: str | None = None
    ) -> tuple[list[StreamStatus], str | None]:
        """Up to ``limit`` streams with ids after ``after`` (in id order), optionally only
        those in ``status``; and the id to continue after (None: nothing further).

        Ids are sorted outside the lock (cached until streams come or go); the lock is
        taken per chunk of ids, only to gather their numbers.
        """
        ids, i = self._slots.ids_after(after, self._lock)
        out: list[StreamStatus] = []
        while i < len(ids) and len(out) <= limit:
            chunk = ids[i : i + max(limit, 256)]
            i += len(chunk)
            with self._lock:
                items = [st for st in map(self._streams.get, chunk) if st is not None]  # evicted meanwhile: gone
                meta = [(st.id, st.device, st.quantity, st.table.model) for st in items]
                snap = report.empty_snapshot(len(items))
                self._snapshot_locked([m[0] for m in meta], snap)
            if status is not None:
                want = report.status_mask(snap, status)
                meta = [m for m, w in zip(meta, want.tolist(), strict=True) if w]
                snap = {k: v[want] for k, v in snap.items()}
            out += report.statuses(meta, snap)
        if len(out) > limit:  # one more than asked for: there is a next page
            return out[:limit], out[limit - 1].id
        return out, None

    def stream(self, stream_id: str) -> StreamStatus | None:
        with self._lock:
            st = self._streams.get(stream_id)
            if st is None:
                return None
            snap = report.empty_snapshot(1)
            report.fill_snapshot(snap, st.table, np.zeros(1, np.intp), np.array([st.row], np.intp))
            meta = [(st.id, st.device, st.quantity, st.table.model)]
        return report.statuses(meta, snap)[0]

    def forecast(self, stream_id: str) -> Forecast | None:
        """The latest stateful forecast (None while warming or unknown)."""
        with self._lock:
            st = self._streams.get(stream_id)
            return None if st is None else report.forecast_of(st.id, st.table, st.row)

    def lookup_forecast(self, stream_id: str) -> ForecastLookup | None:
        """The latest forecast without the engine's lock, for the API's event loop.

        A tick holds the lock for milliseconds (~0.2 s of CPU at 100k streams; store
        reads for warm-up happen off it); a forecast is a few array rows guarded by the
        table's seqlock instead. None: a write overlapped every attempt, use ``forecast()``.
        """
        for _ in range(3):
            st = self._streams.get(stream_id)  # one dict read: atomic under the GIL
            if st is None:
                return ForecastLookup(known=False)
            t, row = st.table, st.row
            version = t.version
            if version & 1:
                continue
            fc = report.forecast_of(st.id, t, row)
            have, need = int(t.warm_have[row]), t.warm_need
            if t.version == version and st.table is t and st.row == row and self._streams.get(stream_id) is st:
                return ForecastLookup(known=True, forecast=fc, warm_have=have, warm_need=need)
        return None

    def recent_alerts(self, limit: int = 100, stream: str | None = None, state: str | None = None) -> list[Alert]:
        """Newest first."""
        with self._lock:
            out = []
            for a in reversed(self._alerts):
                if (stream is None or a.stream_id == stream) and (state is None or a.state == state):
                    out.append(a)
                    if len(out) >= limit:
                        break
            return out

    def set_threshold(self, stream_id: str, threshold: float | None) -> None:
        """Per-stream threshold override (None: back to the model/settings default)."""
        with self._lock:
            st = self._streams.get(stream_id)
            if st is None:
                raise KeyError(stream_id)
            st.table.decider.set_threshold(st.row, threshold)

    # ------------------------------------------------------------ stateless predict

    def predict(
        self,
        model: str,
        version: str | None,
        values: list[list[float]],
        timestamps_ns: list[int] | None = None,
        cadence: float | None = None,
    ) -> Forecast:
        """Forecast from a given history with a fresh state (see ``predict.predict``).

        Raises ModelError for an unknown model/version, ValueError when the history does
        not fit the model (feature count, lengths, order of timestamps, cadence).
        """
        return predict_history(self.registry, model, version, values, timestamps_ns, cadence)

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self) -> int:
        """Write every table's state to ``settings.streams.checkpoint_dir``; returns streams saved.

        Rows are copied under the lock (fast); the files are written after releasing it,
        so ticks and API reads do not wait for the disk. Concurrent calls are serialised.
        """
        directory = self.settings.streams.checkpoint_dir
        taken: list[tuple[ModelTable, str, list[Stream], dict[str, npt.NDArray[np.generic]]]] = []
        with self._lock:
            for name, table in self._tables.items():
                rows = np.flatnonzero(table.occupied)
                owners = table.owners
                taken.append((table, name, [owners[r] for r in rows.tolist()], table.export_rows(rows)))  # copies
        # Stream identities never change: the JSON is built after releasing the lock.
        jobs: list[tuple[str, dict[str, Any], dict[str, npt.NDArray[np.generic]]]] = []
        for table, name, streams, arrays in taken:
            meta = {
                "model": table.model.name, "version": table.model.version,
                "sha256": table.model.manifest.sha256, "saved_ns": time.time_ns(),
                "streams": [
                    {"id": st.id, "device": st.device, "quantity": st.quantity,
                     "tags": [list(t) for t in st.tags], "key": [st.keys[0].device, st.keys[0].quantity]}
                    for st in streams
                ],
            }
            jobs.append((name, meta, arrays))
        with self._checkpoint_lock:
            for name, meta, arrays in jobs:
                checkpoint.write(directory, name, meta, arrays)
            checkpoint.remove_others(directory, {name for name, _, _ in jobs})
        return sum(len(meta["streams"]) for _, meta, _ in jobs)

    def restore(self) -> int:
        """Load checkpoints whose model still matches; returns streams restored."""
        restored = 0
        with self._lock:
            for path, meta, arrays in checkpoint.read_all(self.settings.streams.checkpoint_dir):
                try:
                    loaded = self.registry.get(meta["model"], meta["version"])
                except ModelError as e:
                    log.warning("checkpoint %s skipped: %s", path, e)
                    continue
                if loaded.manifest.sha256 != meta["sha256"]:
                    log.warning("checkpoint %s skipped: model %s changed since", path, loaded.key)
                    continue
                try:
                    restored += self._restore_table(loaded, meta, arrays)
                except (KeyError, ValueError, TypeError, IndexError) as e:  # a damaged file: warm from the store
                    log.error("checkpoint %s unusable, those streams warm from the store: %s", path, e)
        log.info("restored %d streams from checkpoints", restored)
        return restored

    def _restore_table(self, loaded: LoadedModel, meta: dict[str, Any], arrays: dict[str, Any]) -> int:
        streams: list[Stream] = []
        src: list[int] = []
        for i, s in enumerate(meta["streams"]):
            key = StreamKey(s["key"][0], s["key"][1], tuple((k, v) for k, v in s["tags"]))
            hit = self._slots.bind(key)
            if hit is None or hit[3].table.model is not loaded or hit[3].id != s["id"]:
                continue  # bindings changed: this stream now warms from the store
            streams.append(hit[3])
            src.append(i)
        if not streams:
            return 0
        table = streams[0].table
        rows = np.array([st.row for st in streams], np.intp)
        picked = np.array(src, np.intp)
        try:
            table.import_rows(rows, {k: v[picked] for k, v in arrays.items()})  # one gather per array
        except Exception:
            table.reset(rows)  # no half-restored streams: they warm from the store instead
            table.forget_position(rows)
            raise
        for st in streams:
            self._warm.restored_stream(st)
        return len(streams)

    def close(self) -> None:
        """Final checkpoint (shutdown)."""
        try:
            self.checkpoint()
        except OSError as e:
            log.error("final checkpoint failed: %s", e)
