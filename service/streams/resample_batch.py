"""The resample stage: routed readings -> rounds of model steps, for every stream at once.

One object holds both paths over the streams' buckets (the policy is ``resample.py``'s):

- **Fast path, vectorised** (per lane and tick): a stream with nothing pending, exactly
  one reading per feature in this tick, all in its next bucket, and that bucket ended by
  the clock, is stepped straight from arrays: the common case of a sensor on its cadence.
- **Slow path, per stream**: everything else (several readings in a bucket, out of order,
  a bucket still open, gaps, history from warm-up) goes through the stream's
  ``Resampler``, which holds its pending readings while it has any.

A stream's position (next bucket to feed, newest reading fed) has one record: the lane's
``Positions`` arrays, written only here. A ``Resampler`` works on a copy loaded from them
when its stream joins the slow path in a tick (``touch``) and stored back as soon as it
feeds buckets (``take``). Late, duplicate, non-finite and future readings are counted
drops (``sensorcast_late_dropped_total{reason}``).

``take`` yields the tick's steps as rounds: one ``Batch`` per lane and round, distinct rows
with one bucket each (a stream with several due buckets takes one per round).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from service.arrays import F32, I64, IntArr
from service.config import Settings
from service.metrics import Metrics
from service.records import NS_PER_S
from service.streams.lane import Lane, Stream
from service.streams.resample import Resampler, Step, StepBlock, live_window_ns, take_ready_many
from service.streams.slots import Routed

_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True, slots=True)
class Batch:
    """One round of one lane: distinct ``rows`` (B,), one bucket each, inputs ``x`` (B, F)."""

    lane: Lane
    rows: IntArr
    buckets: I64
    x: F32
    restarts: list[Stream]  # streams whose step follows a gap too long to bridge: they start over first


class BatchResampler:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        s = settings.streams
        self.tolerance = s.late_tolerance_steps
        self.max_gap = s.max_gap_steps
        self.grace_ns = round(s.close_grace_s * NS_PER_S)
        self.future_ns = round(s.max_future_s * NS_PER_S)
        self._drops = {r: metrics.late_dropped.labels(r) for r in ("late", "duplicate", "not_finite", "future")}
        # This tick's work: fast rows per lane uid, and streams on the slow path.
        self._fast: dict[int, tuple[IntArr, I64, F32]] = {}
        self._slow: dict[str, Stream] = {}
        self._waiting: dict[int, list[Stream]] = {}  # due time (ns) -> streams with pending buckets
        self.event_time = False  # Engine.use_event_time

    @property
    def slow(self) -> dict[str, Stream]:
        """Streams on the slow path in this tick (warm-up looks at them)."""
        return self._slow

    # -- the slow path's streams -------------------------------------------------------
    def touch(self, st: Stream) -> Resampler:
        """Put ``st`` on the slow path for this tick; its Resampler, at the recorded position."""
        res = st.res
        if st.id in self._slow and res is not None:
            return res
        self._slow[st.id] = st
        lane, row = st.lane, st.row
        if res is None:
            res = st.res = Resampler(lane.cadence_ns, lane.n_in, self.tolerance, self.max_gap, self.grace_ns)
        nb = int(lane.pos.next_bucket[row])
        res.seek(None if nb < 0 else nb, int(lane.pos.last_fed_ts[row]))
        return res

    def restart(self, st: Stream) -> None:
        """``st`` starts over: nothing fed yet (its pending readings stay)."""
        res = self.touch(st)
        res.next_bucket = None
        st.lane.pos.next_bucket[st.row] = -1

    # -- intake ----------------------------------------------------------------------
    def feed(self, routed: Routed, now: int, lanes: dict[int, Lane]) -> None:
        """Bucket this tick's routed readings; then wake streams whose pending buckets
        may have become due by the clock alone."""
        if routed.hits:
            self._feed(routed, now, lanes)
        for due in [d for d in self._waiting if d <= now]:
            for st in self._waiting.pop(due):
                if st.lane.pos.has_pending[st.row] and st.res is not None and st.lane.owners[st.row] is st:
                    self._slow.setdefault(st.id, st)

    def _feed(self, routed: Routed, now: int, lanes: dict[int, Lane]) -> None:
        hits, tss, vals = routed.hits, routed.ts, routed.values
        n = len(hits)
        uid = np.fromiter((h.uid for h in hits), np.int64, n)
        rows_all = np.fromiter((h.row for h in hits), np.intp, n)
        try:
            ts_all = np.fromiter(tss, np.int64, n)
        except OverflowError:  # a timestamp beyond int64: drop it ("future"), keep the rest
            fits = [i for i, t in enumerate(tss) if -(2**63) <= t < 2**63]
            self._drops["future"].inc(n - len(fits))
            if fits:
                self._feed(Routed([hits[i] for i in fits], [tss[i] for i in fits], [vals[i] for i in fits]), now, lanes)
            return
        v_all = np.fromiter(vals, np.float64, n)
        uids = np.unique(uid)
        for u in uids.tolist():
            idx = np.arange(n) if uids.size == 1 else np.flatnonzero(uid == u)
            lane = lanes[u]
            pos = lane.pos
            rows, ts, v = rows_all[idx], ts_all[idx], v_all[idx]
            if self.event_time:  # the readings' own time: the same however ticks group them
                np.maximum.at(lane.seen, rows, np.minimum(ts, now))
            else:
                lane.seen[rows] = now  # for idle eviction (one vector write per lane and tick)
            # float32 is what the model sees: 1e39 is finite here but inf there.
            finite = np.abs(v) < _F32_MAX  # NaN compares False
            future = ts > now + self.future_ns
            if future.any():
                self._drops["future"].inc(int((future & finite).sum()))
                finite &= ~future
            buckets = -(-ts // lane.cadence_ns)
            # The wall clock for live readings, the reading's own time for a backlog (see
            # Resampler.stream_clock): a backlog bucket is fed when a later reading comes.
            live_ns = live_window_ns(lane.cadence_ns, self.tolerance, self.grace_ns)
            clock = np.where(ts >= now - live_ns, now, ts) // lane.cadence_ns
            nb = pos.next_bucket[rows]
            late = finite & (nb >= 0) & (buckets < nb)
            dup = late & (ts == pos.last_fed_ts[rows])
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
            cap, f_in = lane.capacity, lane.n_in
            due = keep & (buckets == nb) & (buckets <= clock) & ~pos.has_pending[rows]
            n_keep = np.bincount(rows[keep], minlength=cap)
            n_due = np.bincount(rows[due], minlength=cap)
            feats = np.zeros(0, np.int64)
            if f_in == 1:
                row_ok = (n_keep == 1) & (n_due == 1)
            else:
                feats = np.fromiter((hits[j].feature for j in idx.tolist()), np.int64, len(idx))
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
                    at = np.searchsorted(fr, rows[go])
                    fb = np.empty(len(fr), np.int64)
                    fb[at] = buckets[go]
                    x = np.full((len(fr), f_in), np.nan, np.float32)  # (B, F)
                    x[at, feats[go]] = v[go]
                    last_ts = np.zeros(len(fr), np.int64)
                    np.maximum.at(last_ts, at, ts[go])
                pos.next_bucket[fr] = fb + 1
                pos.last_fed_ts[fr] = last_ts
                self._fast[u] = (fr, fb, x)
            for i in np.flatnonzero(keep & ~go).tolist():
                j = int(idx[i])
                h = hits[j]
                reason = self.touch(h.stream).add(tss[j], h.feature, vals[j])
                if reason is not None:
                    self._drops[reason].inc()

    # -- out -------------------------------------------------------------------------
    def take(self, now: int, lanes: dict[int, Lane]) -> Iterator[Batch]:
        """This tick's steps, in rounds; the tick's state is handed over and cleared."""
        fast, slow = self._fast, self._slow
        self._fast, self._slow = {}, {}
        queues: dict[int, list[tuple[Stream, list[Step]]]] = {}
        blocks: dict[int, dict[int, StepBlock]] = {}  # lane uid -> position in its queue -> bulk steps
        with_history: dict[int, list[Stream]] = {}  # lane uid -> streams with history in bulk, settled at once
        for st in slow.values():
            if st.res is not None and st.res.has_bulk and not st.ticket:
                with_history.setdefault(st.lane.uid, []).append(st)
        settled = {st.id: got for group in with_history.values()
                   for st, got in zip(group, take_ready_many([st.res for st in group if st.res is not None], now),
                                      strict=True)}
        for st in slow.values():
            res = st.res
            assert res is not None  # streams on the slow path have one
            lane, row = st.lane, st.row
            pos = lane.pos
            if st.ticket:  # history read in flight: its readings wait in res (warmup.py)
                pos.has_pending[row] = True
                continue
            block, steps = settled[st.id] if st.id in settled else res.take_ready(now)  # history's older steps as arrays
            nb = res.next_bucket
            pos.next_bucket[row] = -1 if nb is None else nb
            pos.last_fed_ts[row] = res.last_fed_ts
            if res.pending:
                pos.has_pending[row] = True
                self._waiting.setdefault(res.due_after(now), []).append(st)
            else:
                pos.has_pending[row] = False
                st.res = None  # nothing pending: the arrays are all there is
            if block is not None:
                queue = queues.setdefault(lane.uid, [])
                blocks.setdefault(lane.uid, {})[len(queue)] = block
                queue.append((st, steps))
            elif steps:
                queues.setdefault(lane.uid, []).append((st, steps))
        for u in set(fast) | set(queues):
            lane = lanes[u]
            queue = queues.get(u, [])
            first = fast.get(u)
            if u in blocks:
                yield from _rounds(lane, queue, blocks[u], first)
                continue
            rnd = 0
            while queue or first is not None:
                yield _batch(lane, [(st, steps[rnd]) for st, steps in queue], first)
                first = None
                rnd += 1
                queue = [(st, steps) for st, steps in queue if len(steps) > rnd]


def _rounds(
    lane: Lane, queue: list[tuple[Stream, list[Step]]], blocks: dict[int, StepBlock],
    first: tuple[IntArr, I64, F32] | None,
) -> Iterator[Batch]:
    """The rounds of a lane whose queue has bulk steps (warm-up): every stream's steps in
    flat arrays, its block's then its list's; round r takes step r of each stream that has
    one, in queue order (as ``take``'s per-round lists do)."""
    m, nf = len(queue), lane.n_in
    listed = [s for _, steps in queue for s in steps]
    n_list = np.fromiter((len(steps) for _, steps in queue), np.int64, m)
    n_block = np.zeros(m, np.int64)
    for i, blk in blocks.items():
        n_block[i] = len(blk.buckets)
    parts = [blocks[i] for i in sorted(blocks)]
    x = np.concatenate([*(b.x for b in parts), np.array([s.values for s in listed], np.float64).reshape(-1, nf)])
    x32 = x.astype(np.float32)  # (T, F)
    buckets = np.concatenate([*(b.buckets for b in parts), np.fromiter((s.bucket for s in listed), np.int64, len(listed))])
    reset = np.concatenate([*(b.reset for b in parts), np.fromiter((s.reset for s in listed), np.bool_, len(listed))])
    in_blocks = int(n_block.sum())
    at_block = np.cumsum(n_block) - n_block  # where each stream's block starts in the flat arrays
    at_list = in_blocks + np.cumsum(n_list) - n_list  # ... and its list
    total = n_block + n_list
    rows_q = np.fromiter((st.row for st, _ in queue), np.intp, m)
    for rnd in range(max(int(total.max()) if m else 0, 1 if first is not None else 0)):
        sel = np.flatnonzero(total > rnd)
        nb = n_block[sel]
        at = np.where(rnd < nb, at_block[sel] + rnd, at_list[sel] + rnd - nb)  # step rnd of each, in the flat arrays
        rows, bk, xs = rows_q[sel], buckets[at], x32[at]
        restarts = [queue[j][0] for j in sel[reset[at]].tolist()]
        if rnd == 0 and first is not None:
            rows, bk, xs = np.concatenate([first[0], rows]), np.concatenate([first[1], bk]), np.concatenate([first[2], xs])
        yield Batch(lane, rows, bk, xs, restarts)


def _batch(lane: Lane, steps: list[tuple[Stream, Step]], first: tuple[IntArr, I64, F32] | None) -> Batch:
    rows = np.fromiter((st.row for st, _ in steps), np.intp, len(steps))
    buckets = np.fromiter((s.bucket for _, s in steps), np.int64, len(steps))
    x = np.array([s.values for _, s in steps], np.float32).reshape(len(steps), lane.n_in)  # (B, F)
    restarts = [st for st, s in steps if s.reset]
    if first is not None:
        rows = np.concatenate([first[0], rows])
        buckets = np.concatenate([first[1], buckets])
        x = np.concatenate([first[2], x])
    return Batch(lane, rows, buckets, x, restarts)
