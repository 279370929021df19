"""Stream slots: which stream a reading feeds, its row, admission limits and eviction.

The one owner of binding, rows and eviction: a stream's row in its model's ``Lane`` is
allocated when it is bound and freed when it is dropped (model change, eviction).

- **Routes.** ``routes`` maps a reading's ``StreamKey`` to its ``Hit`` (lane uid, row,
  input feature, stream), or to None when no model serves the key or the key was refused. The
  tick looks every reading up there (one dict read); only a key not there yet is bound.
- **Limits.** A key that would create a stream beyond ``streams.max_streams`` in total or
  ``streams.max_streams_per_device`` for its device is refused for inference: counted
  (``sensorcast_streams_refused{reason}``), logged at most every 10 s, and its readings
  are still stored (the ingester writes before the engine sees anything). Counts are
  checked only when a new stream is bound, never per reading.
- **Negative entries are bounded.** Unrouted and refused keys are remembered (so a busy
  unserved key is routed once, not per reading) up to ``NEGATIVE_CAP`` of them; then they
  are all forgotten and re-routed when they come again. They are also forgotten when
  eviction frees rows, so a refused key gets its chance.
- **Eviction.** A stream without a reading for ``streams.idle_evict_s`` (engine clock, and
  at least two of its cadences) is evicted: its row is exported into ``EvictedStates``
  (while still recent enough to continue from), the row is freed for reuse, and the
  stream is restored from that state when it returns (then treated like a stream restored
  from a checkpoint: a short gap is caught up from the store). A *firing* stream stays
  until a return could no longer continue it (``max_gap_steps`` buckets after its last
  step, when the gap rule would reset it anyway); then it is evicted and its alert
  resolves with reason ``evicted``: a firing state kept for a stream that never returns
  would stay firing on the broker for ever.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import NamedTuple, Protocol, cast

import numpy as np

from service.config import Settings
from service.metrics import Metrics
from service.records import NS_PER_S, Reading, StreamKey
from service.runtime.registry import LoadedModel, ModelRegistry
from service.streams.binding import NO_MODEL, BindLog, Route, route, summary
from service.streams.evicted import EvictedStates
from service.streams.lane import Lane, Stream, table_name
from service.streams.quality_stage import SILENT


class WarmupHooks(Protocol):
    """What the slots tell the warm stage (``warmup.Warmup``) about streams that come and go.

    A protocol rather than an import: the warm stage sits above the slots in the flow.
    """

    def new_stream(self, st: Stream) -> None: ...
    def restored_stream(self, st: Stream) -> None: ...
    def forget(self, st: Stream) -> None: ...

log = logging.getLogger(__name__)

NEGATIVE_CAP = 65_536  # unrouted/refused keys remembered (about 20 MB of keys at most)
UNSERVED_CAP = 10_000  # stream ids seen with no model, listed (oldest forgotten first)
_LOG_EVERY_S = 10.0


class Hit(NamedTuple):
    """Where a reading's key goes (a NamedTuple: built once per key, read per reading)."""

    uid: int  # the lane (model) serving it
    row: int  # the stream's row in that lane
    feature: int  # the model input feature the reading fills
    stream: Stream


_UNSEEN = Hit(-1, -1, -1, cast(Stream, None))  # routes.get default: a key not routed yet


@dataclass(frozen=True, slots=True)
class Routed:
    """A tick's readings that feed a stream, as parallel lists."""

    hits: list[Hit]
    ts: list[int]
    values: list[float]


class StreamSlots:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        metrics: Metrics,
        warm: WarmupHooks,
        resolve: Callable[[Stream, str], None],
        configure: Callable[[Stream], None] | None = None,
    ) -> None:
        s = settings.streams
        self.settings = settings
        self.registry = registry
        self.warm = warm
        self._resolve = resolve  # emits "resolved" for a firing stream that leaves (reason)
        self._configure = configure  # gives a new stream its effective alert rules
        self.lanes: dict[str, Lane] = {}  # "model@version" -> its lane
        self.by_uid: dict[int, Lane] = {}
        self.streams: dict[str, Stream] = {}
        self.routes: dict[StreamKey, Hit | None] = {}
        self._negative: list[StreamKey] = []  # keys routed to None, in the order added
        self._next_uid = 0
        self.max_streams = s.max_streams
        self.max_per_device = s.max_streams_per_device
        self._per_device: dict[str, int] = {}
        self._refused = {r: metrics.streams_refused.labels(r) for r in ("max_streams", "max_streams_per_device")}
        self._evictions = metrics.streams_evicted
        self._refused_since_log = 0
        self._refused_logged = 0.0
        self.idle_ns = round(s.idle_evict_s * NS_PER_S)
        # Scan for idle rows a few times per idle period (an evicted stream was idle for
        # between idle_evict_s and 1.25 x that), at most every minute.
        self._scan_every_ns = min(self.idle_ns // 4, 60 * NS_PER_S)
        self._next_scan_ns = 0
        self.evicted = EvictedStates(s.max_streams or 100_000)
        self.members = 0  # bumped when a stream comes or goes (the API's sorted-id cache)
        # Stream ids whose readings came with no model to serve them ("no model matches"):
        # listed in the model summary, and bound at once when a reload brings a model.
        self.unserved: OrderedDict[str, StreamKey] = OrderedDict()
        self._budget = BindLog()
        self._sorted: tuple[int, list[str]] = (-1, [])

    # ------------------------------------------------------------ routing

    def route(self, readings: Sequence[Reading]) -> Routed:
        """The readings that feed a stream, with where they go (new keys are bound here)."""
        routes, bind = self.routes, self.bind
        hits: list[Hit] = []
        tss: list[int] = []
        vals: list[float] = []
        for r in readings:
            found = routes.get(r.stream, _UNSEEN)
            hit = bind(r.stream) if found is _UNSEEN else found
            if hit is not None:
                hits.append(hit)
                tss.append(r.ts_ns)
                vals.append(r.value)
        return Routed(hits, tss, vals)

    def bind(self, key: StreamKey, was: str | None = None) -> Hit | None:
        """Route ``key`` and give it its stream (``was``: the model it left, for the log)."""
        rt = route(key, self.registry, self.settings.models.bindings)
        if rt is None:
            self._remember_none(key)
            self._unserved(key, was)
            return None
        if self.unserved.pop(key.id, None) is not None:
            self.members += 1
        st = self.streams.get(rt.stream_id)
        if st is None or st.lane.model is not rt.model:
            if st is not None:  # the stream moved to another model: start it over
                was = st.lane.model.key
                self.drop(st, reason="model changed")
            refused = self._over_limit(key.device)
            if refused is not None:
                self._refuse(key, rt.stream_id, refused)
                return None
            st = self._add(key, rt)
            if self._budget.allow():
                rule = {"binding": "a binding in models.bindings", "streams": "its manifest's streams",
                        "catch-all": "catch-all: a 'value' model declaring no streams"}.get(rt.why, "feature names")
                if was is None:
                    log.info("stream %s: served by model %s (%s)", st.id, rt.model.key, rule)
                else:
                    log.info("stream %s: moves from model %s to %s (%s); it re-warms from the store",
                             st.id, was, rt.model.key, rule)
        hit = Hit(st.lane.uid, st.row, rt.feature, st)
        self.routes[key] = hit
        return hit

    def _unserved(self, key: StreamKey, was: str | None) -> None:
        sid = key.id
        if sid in self.unserved:
            return
        if len(self.unserved) >= UNSERVED_CAP:
            self.unserved.popitem(last=False)
        self.unserved[sid] = key
        self.members += 1  # listed in GET /v1/streams (status no_model)
        if self._budget.allow():
            left = f"left model {was}: " if was is not None else ""
            log.info("stream %s: %s%s (models.bindings, the models' manifest streams, feature names); "
                     "its readings are stored, not forecast", sid, left, NO_MODEL)

    def _add(self, key: StreamKey, rt: Route) -> Stream:
        lane = self.lane_for(rt.model)
        st = Stream(rt.stream_id, key, rt, lane)
        if self._configure is not None:
            self._configure(st)
        self.streams[st.id] = st
        self._per_device[st.device] = self._per_device.get(st.device, 0) + 1
        self.members += 1
        saved = self.evicted.pop(st.id, lane.name, rt.model.manifest.sha256)
        if saved is not None:
            rows = np.array([st.row], np.intp)
            try:
                lane.import_rows(rows, saved)
                self.warm.restored_stream(st)
                return st
            except (KeyError, ValueError) as e:  # cannot happen for the same model file; be safe
                log.error("evicted state of %s unusable, it warms from the store: %s", st.id, e)
                lane.wipe(rows)
                self.reconfigure([st])
        self.warm.new_stream(st)
        return st

    def reconfigure(self, streams: Sequence[Stream]) -> None:
        """Give these streams their alert rules again (after their rows were wiped)."""
        if self._configure is not None:
            for st in streams:
                self._configure(st)

    def _over_limit(self, device: str) -> str | None:
        if self.max_streams and len(self.streams) >= self.max_streams:
            return "max_streams"
        if self.max_per_device and self._per_device.get(device, 0) >= self.max_per_device:
            return "max_streams_per_device"
        return None

    def _refuse(self, key: StreamKey, stream_id: str, reason: str) -> None:
        self._refused[reason].inc()
        self._remember_none(key)
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._refused_logged >= _LOG_EVERY_S:  # one line per 10 s, not one per key
            log.warning(
                "refused %d new streams for inference (limits: streams.max_streams=%d, max_streams_per_device=%d), "
                "latest %r (%s); their readings are still stored",
                self._refused_since_log, self.max_streams, self.max_per_device, stream_id, reason,
            )
            self._refused_logged = now
            self._refused_since_log = 0

    def _remember_none(self, key: StreamKey) -> None:
        if len(self._negative) >= NEGATIVE_CAP:
            self.forget_negative()
        self.routes[key] = None
        self._negative.append(key)

    def forget_negative(self) -> None:
        """Forget unrouted and refused keys (they are routed again when they come)."""
        routes = self.routes
        for k in self._negative:
            if k in routes and routes[k] is None:
                del routes[k]
        self._negative = []

    def lane_for(self, model: LoadedModel) -> Lane:
        name = table_name(model)
        lane = self.lanes.get(name)
        if lane is None or lane.model is not model:
            self._next_uid += 1
            lane = self.lanes[name] = Lane(model, self.settings, self._next_uid)
            self.by_uid[lane.uid] = lane
        return lane

    def drop(self, st: Stream, reason: str) -> None:
        """The stream leaves: its alert resolves, its row is freed, its keys are routed again."""
        self._resolve(st, reason)
        st.lane.release(st.row)
        self.streams.pop(st.id, None)
        self.warm.forget(st)
        for k in st.keys:
            self.routes.pop(k, None)
        n = self._per_device.get(st.device, 0) - 1
        if n > 0:
            self._per_device[st.device] = n
        else:
            self._per_device.pop(st.device, None)
        self.members += 1

    def sync_models(self) -> None:
        """After a registry change: every key is routed again; streams whose model changed
        start over on the new one and re-warm from the store at once (not on their next
        reading), and so do streams seen with no model that a new model now serves; lanes
        nobody uses go."""
        self.routes.clear()
        self._negative = []
        for st in list(self.streams.values()):
            rt = route(st.keys[0], self.registry, self.settings.models.bindings)
            if rt is not None and rt.stream_id == st.id and rt.model is st.lane.model:
                continue
            keys, was = st.keys, st.lane.model.key
            self.drop(st, reason="model changed")
            for k in keys:
                self.bind(k, was)
        for key in list(self.unserved.values()):
            self.routes.pop(key, None)
            self.bind(key)
        live = {st.lane.name for st in self.streams.values()}
        for name in list(self.lanes):
            if name not in live:
                self.by_uid.pop(self.lanes.pop(name).uid, None)

    def forget(self, stream_id: str) -> bool:
        """DELETE /v1/streams/{id}: the stream's row, state, pending readings and saved
        (evicted) state go (its firing alerts resolve, reason deleted); a later reading
        creates it again, warmed from the store. False when the id is unknown."""
        known = self.evicted.discard(stream_id)
        key = self.unserved.pop(stream_id, None)
        if key is not None:
            self.routes.pop(key, None)
            self.members += 1
            known = True
        st = self.streams.get(stream_id)
        if st is None:
            return known
        self.drop(st, reason="deleted")
        log.info("stream %s deleted (served by %s): its history stays in the store", stream_id, st.lane.model.key)
        return True

    def summary(self) -> str:
        """One bounded line: which model serves how many streams, and the streams with none."""
        counts: dict[str, int] = {}
        for lane in self.lanes.values():
            counts[lane.model.key] = counts.get(lane.model.key, 0) + lane.used
        single = {st.lane.model.key: st.id for st in self.streams.values() if counts.get(st.lane.model.key) == 1}
        return summary(self.registry.all(), counts, single, list(self.unserved))

    def status_counts(self) -> dict[str, int]:
        """Streams by status, counted from the lanes' arrays (cheap at 100k rows)."""
        counts = {"warming": 0, "ok": 0, "firing": 0}
        for lane in self.lanes.values():
            for status, n in zip(counts, lane.status_counts(), strict=True):
                counts[status] += n
        return counts

    # ------------------------------------------------------------ eviction

    def evict_idle(self, now: int) -> int:
        """Every few minutes of the engine clock: evict streams idle for ``idle_evict_s``."""
        if self.idle_ns <= 0 or now < self._next_scan_ns:
            return 0
        self._next_scan_ns = now + self._scan_every_ns
        self.evicted.expire(now)
        gap_steps = self.settings.streams.max_gap_steps
        evicted = 0
        for name, lane in list(self.lanes.items()):
            occupied = lane.occupied
            lane.seen[occupied & (lane.seen < 0)] = now  # restored from a checkpoint: idle from now on
            # Not idle before it has missed two buckets (a slow-cadence stream between readings).
            quiet = occupied & (lane.seen < now - max(self.idle_ns, 2 * lane.cadence_ns)) & ~lane.pos.has_pending
            # A state is worth keeping while a return would be bridged, not reset (gap rule).
            useful_until = (lane.table.last_bucket + gap_steps + 1) * lane.cadence_ns
            # A firing stream stays until then: its alert resolves ("evicted") only when a
            # return could no longer continue it, as the gap rule would on that return.
            # A silent alert stays while its stream does: a dead sensor is alerted until it
            # returns or its silent rule is turned off, not for idle_evict_s only.
            silent = lane.quality.firing[:, SILENT]
            idle = np.flatnonzero(quiet & ~silent & (~lane.anomaly.decider.firing | (useful_until < now)))
            streams = [st for st in (lane.owners[r] for r in idle.tolist()) if st is not None and st.ticket == 0]
            if not streams:
                continue
            rows = np.array([st.row for st in streams], np.intp)
            keep = (lane.table.warm_have[rows] > 0) & (useful_until[rows] >= now)
            arrays = lane.export_rows(rows[keep])  # copies
            idx = np.flatnonzero(keep)
            self.evicted.put(
                [streams[i].id for i in idx.tolist()], name, lane.model.manifest.sha256, arrays, useful_until[rows[idx]]
            )
            for st in streams:
                self.drop(st, reason="evicted")
            self._evictions.labels("saved").inc(int(idx.size))
            self._evictions.labels("dropped").inc(len(streams) - int(idx.size))
            evicted += len(streams)
        if evicted:
            self.forget_negative()  # rows were freed: refused keys get their chance
            log.info("evicted %d streams idle for %.0f s (%d saved states kept)",
                     evicted, self.idle_ns / NS_PER_S, len(self.evicted))
        return evicted

    # ------------------------------------------------------------ listing

    def ids_after(self, after: str | None, lock: AbstractContextManager[object]) -> tuple[list[str], int]:
        """Every stream id (those with no model too), sorted, and where ids greater than ``after`` begin.

        The sorted list is cached until streams come or go, and sorted outside the
        engine's ``lock``: only the copy of the keys is made under it.
        """
        version, ids = self._sorted
        if version != self.members:
            with lock:
                version, ids = self.members, [*self.streams, *self.unserved]
            ids.sort()
            self._sorted = (version, ids)
        return ids, 0 if after is None else bisect.bisect_right(ids, after)
