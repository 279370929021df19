"""Per-stream resampling of irregular readings onto the model's cadence.

Policy (stated once, here):

- **Buckets.** With cadence ``c``, a reading at ``ts`` belongs to bucket ``k = ceil(ts / c)``,
  the interval ``((k-1) c, k c]``, labelled by its end ``k c``. A sensor stamping readings
  on the cadence (``ts = k c``) therefore fills bucket ``k`` exactly and it can be fed at
  once; the step's timestamp (and its time features) is ``k c``.
- **Value.** The mean of the bucket's readings, per feature; a feature with no reading in
  the bucket is NaN (the model's graph treats NaN as missing).
- **Duplicates.** A second reading with the same feature and timestamp in a bucket that has
  not been fed yet replaces nothing and is dropped (reason ``duplicate``); a reading with
  the timestamp of the last fed reading is also ``duplicate``.
- **When a bucket is fed.** A bucket with readings is fed once the clock has passed its end
  or a reading for a later bucket has arrived. A multivariate bucket that still lacks some
  features waits up to ``grace`` past its end for them (sensors publish each quantity as
  its own message). Out-of-order readings are merged as long as their bucket has not been
  fed.
- **Late.** Readings for a bucket that was already fed are dropped (reason ``late``): the
  recurrent state cannot be rewound. To give stragglers a chance, an *empty* bucket is
  only fed as missing once the clock (or a later reading) is ``late_tolerance_steps``
  buckets past it.
- **Gaps.** Up to ``max_gap_steps`` empty buckets are bridged by feeding NaN steps; a longer
  gap resets the stream (state zeroed, warm-up starts again at the next reading).

History from the store (warm-up, catch-up) comes in bulk (``add_many``): its readings are
kept as arrays and bucketed with numpy (``take_ready``), with the same policy and the same
result as adding them one by one (tests/unit/test_resample_bulk.py). Only the buckets that
nothing still pending can change are settled so; the newest few go through the per-reading
path above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.arrays import F64, I64, Col, RowArrays

NAN = math.nan


class Positions(RowArrays):
    """Where each row's stream stands in its buckets: the one record of it (see
    ``resample_batch.BatchResampler``, which alone writes it)."""

    next_bucket = Col(np.int64, fill=-1)  # the next bucket to feed; -1: nothing fed yet
    last_fed_ts = Col(np.int64, fill=0)  # newest reading time in the buckets fed
    has_pending = Col(np.bool_, fill=False, saved=False)  # readings wait in the stream's Resampler


@dataclass(frozen=True, slots=True)
class StepBlock:
    """Consecutive model steps of one stream, as arrays (``Resampler.take_ready``)."""

    buckets: I64  # (n,)
    x: F64  # (n, F) values per feature, NaN = missing
    reset: npt.NDArray[np.bool_]  # (n,) zero the state before this step


@dataclass(frozen=True, slots=True)
class Step:
    """One model step for one stream: bucket index, values per feature (NaN = missing)."""

    bucket: int
    values: tuple[float, ...]
    reset: bool = False  # zero the state before this step (a long gap came first)


def live_window_ns(cadence_ns: int, tolerance: int, grace_ns: int) -> int:
    """A stream whose newest reading is older than this (vs the clock) is catching up."""
    return (tolerance + 1) * cadence_ns + grace_ns


class Resampler:
    """Pending readings of one stream and the next bucket to feed."""

    __slots__ = (
        "_bulk", "_pending", "cadence_ns", "grace_ns", "last_fed_ts", "live_ns", "max_gap", "n_features", "next_bucket",
        "tolerance",
    )

    def __init__(self, cadence_ns: int, n_features: int, tolerance: int, max_gap: int, grace_ns: int = 0) -> None:
        self.cadence_ns = cadence_ns
        self.grace_ns = grace_ns
        self.n_features = n_features
        self.tolerance = tolerance
        self.max_gap = max_gap
        self.live_ns = live_window_ns(cadence_ns, tolerance, grace_ns)
        self.next_bucket: int | None = None  # None: nothing fed yet
        self.last_fed_ts = -(2**62)
        self._pending: dict[int, dict[tuple[int, int], float]] = {}
        # History added in bulk: (ts, feature, value, bucket) arrays, deduplicated, in the
        # order added; its buckets are older than every bucket in _pending when added.
        self._bulk: tuple[I64, I64, F64, I64] | None = None

    def bucket_of(self, ts_ns: int) -> int:
        return -(-ts_ns // self.cadence_ns)

    def add(self, ts_ns: int, feature: int, value: float) -> str | None:
        """Merge one reading; returns the drop reason (``late``/``duplicate``) or None."""
        b = -(-ts_ns // self.cadence_ns)
        if self.next_bucket is not None and b < self.next_bucket:
            return "duplicate" if ts_ns == self.last_fed_ts else "late"
        if self._bulk is not None and self._in_bulk(ts_ns, feature):
            return "duplicate"
        bucket = self._pending.get(b)
        if bucket is None:
            self._pending[b] = {(feature, ts_ns): value}
            return None
        key = (feature, ts_ns)
        if key in bucket:
            return "duplicate"
        bucket[key] = value
        return None

    @property
    def pending(self) -> int:
        if self._bulk is not None:
            return len(set(self._pending) | set(np.unique(self._bulk[3]).tolist()))
        return len(self._pending)

    def first_pending_ts(self) -> int | None:
        first = min((ts for b in self._pending.values() for _, ts in b), default=None)
        if self._bulk is not None:
            lo = int(self._bulk[0].min())
            first = lo if first is None else min(first, lo)
        return first

    def _mean(self, bucket: dict[tuple[int, int], float]) -> tuple[float, ...]:
        if self.n_features == 1 and len(bucket) == 1:
            return (next(iter(bucket.values())),)
        sums = [0.0] * self.n_features
        counts = [0] * self.n_features
        for (f, _), v in bucket.items():
            sums[f] += v
            counts[f] += 1
        return tuple(s / n if n else NAN for s, n in zip(sums, counts, strict=True))

    def stream_clock(self, now_ns: int) -> int:
        """``now_ns`` while the stream is live; its newest reading's time while it catches up.

        A backlog (a gateway flushing an hour of buffered readings) arrives long after its
        buckets ended by the wall clock, and several readings may share a bucket: the wall
        clock says nothing about whether more are coming, the next reading does.
        """
        newest = max(self.last_fed_ts, max((ts for b in self._pending.values() for _, ts in b), default=self.last_fed_ts))
        if self._bulk is not None:
            newest = max(newest, int(self._bulk[0].max()))
        return now_ns if newest >= now_ns - self.live_ns else newest

    def ready(self, now_ns: int) -> list[Step]:
        """The steps that can be fed now, oldest first (and forget them)."""
        if self._bulk is not None:  # not settled by the caller: every bulk reading goes the per-reading way
            self._spill(np.ones(len(self._bulk[0]), np.bool_))
        if not self._pending:
            return []
        return self._ready(self.stream_clock(now_ns))

    def take_ready(self, now_ns: int) -> tuple[StepBlock | None, list[Step]]:
        """``ready``, with the bulk history's settled steps as arrays first (``_settle``)."""
        if self._bulk is None:
            return None, self.ready(now_ns)
        clock = self.stream_clock(now_ns)  # before settling: the fed position moves, the clock must not
        block = self._settle()
        return block, self._ready(clock) if self._pending else []

    def ready_after(self, clock_ns: int) -> list[Step]:
        """``ready`` with the stream clock taken already (``take_ready_many``)."""
        return self._ready(clock_ns) if self._pending else []

    def _ready(self, now_ns: int) -> list[Step]:
        clock = now_ns // self.cadence_ns  # buckets <= clock have ended
        grace_clock = (now_ns - self.grace_ns) // self.cadence_ns  # ... and their grace is over
        if len(self._pending) == 1:  # the common case: one bucket, in order
            b = next(iter(self._pending))
            nb = self.next_bucket
            if b <= clock and (nb is None or b == nb) and (b <= grace_clock or self._full(b)):
                return [self._take(b, reset=False)]
        buckets = sorted(self._pending)
        newest = buckets[-1]
        limit = max(clock, newest - 1)  # buckets with readings up to here are complete
        steps: list[Step] = []
        f = self.next_bucket if self.next_bucket is not None else buckets[0]
        for b in buckets:
            if b > limit or (b == newest and b > grace_clock and not self._full(b)):
                break
            gap = b - f
            reset = False
            if gap > self.max_gap:
                reset = True  # too long to bridge: start over at b
            elif gap > 0:
                if b - 1 > limit - self.tolerance:
                    break  # a straggler for the empty buckets may still come
                steps.extend(Step(e, (NAN,) * self.n_features) for e in range(f, b))
            steps.append(self._take(b, reset))
            f = b + 1
        return steps

    def due_after(self, now_ns: int) -> int:
        """The next time the clock alone could make a pending bucket ready."""
        nxt = (now_ns // self.cadence_ns + 1) * self.cadence_ns  # the next bucket end
        if self.grace_ns and (self._pending or self._bulk is not None):
            newest = max(self._pending, default=-(2**62))
            if self._bulk is not None:
                newest = max(newest, int(self._bulk[3].max()))
            g = newest * self.cadence_ns + self.grace_ns  # the newest bucket's grace runs out
            if now_ns < g < nxt:
                return g
        return nxt

    def _full(self, b: int) -> bool:
        """Every feature has a reading in bucket ``b`` (always true for one feature)."""
        if self.n_features == 1:
            return True
        return len({f for f, _ in self._pending[b]}) == self.n_features

    def _take(self, b: int, reset: bool) -> Step:
        bucket = self._pending.pop(b)
        self.next_bucket = b + 1
        self.last_fed_ts = max(ts for _, ts in bucket)
        return Step(b, self._mean(bucket), reset)

    def restore(self, next_bucket: int | None, last_fed_ts: int) -> None:
        self.seek(next_bucket, last_fed_ts)
        self._pending.clear()
        self._bulk = None

    def seek(self, next_bucket: int | None, last_fed_ts: int) -> None:
        """Set the position (pending readings stay)."""
        self.next_bucket = next_bucket
        self.last_fed_ts = last_fed_ts

    # -- history in bulk ---------------------------------------------------------------
    def add_many(self, ts: I64, features: I64, values: F64) -> int:
        """``add`` for each reading in order (history from the store); returns how many
        were added (the others are late or duplicates). Readings for buckets already
        pending go through ``add``; older ones are kept as arrays until ``take_ready``."""
        if self._bulk is not None:  # a second batch: the first one goes the per-reading way
            self._spill(np.ones(len(self._bulk[0]), np.bool_))
        b = -(-ts // self.cadence_ns)
        if self.next_bucket is not None:  # older buckets are fed: late (or duplicate), never added
            fresh = b >= self.next_bucket
            ts, features, values, b = ts[fresh], features[fresh], values[fresh], b[fresh]
        added = 0
        if self._pending:  # buckets with readings already: merged one by one, after them
            one = b >= min(self._pending)
            for t, f, v in zip(ts[one].tolist(), features[one].tolist(), values[one].tolist(), strict=True):
                added += self.add(t, f, v) is None
            ts, features, values, b = ts[~one], features[~one], values[~one], b[~one]
        if len(ts) > 1 and not (self.n_features == 1 and bool((ts[1:] > ts[:-1]).all())):
            # A second (feature, ts) is a duplicate: keep the first of each.
            order = np.lexsort((features, ts))  # stable: equal keys keep the order added
            st, sf = ts[order], features[order]
            first = np.ones(len(ts), np.bool_)
            first[1:] = (st[1:] != st[:-1]) | (sf[1:] != sf[:-1])
            keep = np.sort(order[first])
            ts, features, values, b = ts[keep], features[keep], values[keep], b[keep]
        if len(ts):
            self._bulk = (ts, features, values, b)
        return added + len(ts)

    def _in_bulk(self, ts_ns: int, feature: int) -> bool:
        assert self._bulk is not None
        bt, bf = self._bulk[0], self._bulk[1]
        return bool(((bt == ts_ns) & (bf == feature)).any())

    def _spill(self, which: npt.NDArray[np.bool_]) -> None:
        """Move the ``which`` bulk readings into the per-reading buckets, before the readings
        added there since (the order ``add`` would have kept)."""
        assert self._bulk is not None
        bt, bf, bv, bb = self._bulk
        out: dict[int, dict[tuple[int, int], float]] = {}
        for t, f, v, b in zip(bt[which].tolist(), bf[which].tolist(), bv[which].tolist(), bb[which].tolist(), strict=True):
            out.setdefault(b, {})[(f, t)] = v
        for b, bucket in out.items():
            bucket.update(self._pending.get(b, {}))  # no key in both: add() refused those
            self._pending[b] = bucket
        rest = ~which
        self._bulk = (bt[rest], bf[rest], bv[rest], bb[rest]) if rest.any() else None

    def _settle(self) -> StepBlock | None:
        return settle_many([self])[0]

    @property
    def has_bulk(self) -> bool:
        return self._bulk is not None


_NONE = -(2**62)


def take_ready_many(rs: list[Resampler], now_ns: int) -> list[tuple[StepBlock | None, list[Step]]]:
    """``take_ready`` for many streams of one lane with bulk history, settled at once."""
    clocks = [r.stream_clock(now_ns) for r in rs]  # before settling (see take_ready)
    some = [i for i, r in enumerate(rs) if r.has_bulk]
    blocks: list[StepBlock | None] = [None] * len(rs)
    for i, b in zip(some, settle_many([rs[i] for i in some]) if some else [], strict=True):
        blocks[i] = b
    return [(b, r.ready_after(c)) for r, b, c in zip(rs, blocks, clocks, strict=True)]


def settle_many(rs: list[Resampler]) -> list[StepBlock | None]:
    """``Resampler._settle`` of streams of one lane (the same cadence, features, tolerance
    and gap limit), each with bulk history: one set of numpy calls over all of it.

    ``ready`` feeds every pending bucket older than ``newest - tolerance`` (``newest``: the
    newest bucket with readings), bridging or resetting the gaps before it, whatever the
    clock says: so are these, with the same means (sums in the order added). Buckets from
    there on, or from the first bucket with readings added one by one, join those (before
    them: the order ``add`` would have kept) and go the per-reading way.
    """
    m, nf, tol, max_gap = len(rs), rs[0].n_features, rs[0].tolerance, rs[0].max_gap
    bulks = [r._bulk for r in rs]
    assert all(b is not None for b in bulks)
    ts, fs, vs, bk = (np.concatenate([b[i] for b in bulks if b is not None]) for i in range(4))
    lens = np.fromiter((len(b[0]) for b in bulks if b is not None), np.int64, m)
    starts = np.cumsum(lens) - lens
    sid = np.repeat(np.arange(m), lens)
    for r in rs:
        r._bulk = None
    d_max = np.fromiter((max(r._pending, default=_NONE) for r in rs), np.int64, m)
    d_min = np.fromiter((min(r._pending, default=-_NONE) for r in rs), np.int64, m)
    nb = np.fromiter((_NONE if r.next_bucket is None else r.next_bucket for r in rs), np.int64, m)
    cut = np.minimum(np.maximum(np.maximum.reduceat(bk, starts), d_max) - max(tol, 1), d_min - 1)
    early = bk <= cut[sid]
    below = np.minimum.reduceat(np.where(early, bk, -_NONE), starts) < nb  # (cannot happen: add_many drops them)
    if below.any():
        early &= ~below[sid]
    tail = np.flatnonzero(~early)
    if tail.size:  # into the per-reading buckets, before what was added there since
        outs: dict[int, dict[int, dict[tuple[int, int], float]]] = {}
        for i, t, f, v, b in zip(sid[tail].tolist(), ts[tail].tolist(), fs[tail].tolist(), vs[tail].tolist(),
                                 bk[tail].tolist(), strict=True):
            outs.setdefault(i, {}).setdefault(b, {})[(f, t)] = v
        for i, out in outs.items():
            pending = rs[i]._pending
            for b, bucket in out.items():
                bucket.update(pending.get(b, {}))  # no key in both: add() refused those
                pending[b] = bucket
    blocks: list[StepBlock | None] = [None] * m
    e = np.flatnonzero(early)
    if not e.size:
        return blocks
    ts, fs, vs, bk, sid = ts[e], fs[e], vs[e], bk[e], sid[e]
    if not bool(((sid[1:] > sid[:-1]) | (bk[1:] >= bk[:-1])).all()):  # not in bucket order within a stream
        order = np.lexsort((bk, sid))  # stable: a bucket's readings keep the order added
        ts, fs, vs, bk, sid = ts[order], fs[order], vs[order], bk[order], sid[order]
    new = np.ones(len(bk), np.bool_)
    new[1:] = (sid[1:] != sid[:-1]) | (bk[1:] != bk[:-1])
    g_at = np.flatnonzero(new)  # each (stream, bucket) group's first reading
    g = np.cumsum(new) - 1
    k = len(g_at)
    gb, gs = bk[g_at], sid[g_at]
    at = g * nf + fs
    count = np.bincount(at, minlength=k * nf)
    with np.errstate(invalid="ignore"):
        mean = np.bincount(at, weights=vs, minlength=k * nf) / count  # 0/0: NaN, a missing feature
    if nf == 1:  # one reading: its value as it is (as _mean; 0.0 + -0.0 would lose the sign)
        one = np.empty(k)
        one[g] = vs
        mean = np.where(count == 1, one, mean)
    s_first = np.ones(k, np.bool_)
    s_first[1:] = gs[1:] != gs[:-1]
    s_last = np.ones(k, np.bool_)
    s_last[:-1] = s_first[1:]
    prev = np.empty(k, np.int64)  # the bucket each group would follow on from
    prev[1:] = gb[:-1] + 1
    nb_first = nb[gs[s_first]]
    prev[s_first] = np.where(nb_first == _NONE, gb[s_first], nb_first)
    gap = gb - prev
    reset = gap > max_gap
    first = np.where((gap > 0) & ~reset, prev, gb)  # bridged: NaN steps from prev on
    n = gb - first + 1
    ends = np.cumsum(n) - 1
    steps = (np.arange(int(n.sum())) - np.repeat(ends - n + 1, n) + np.repeat(first, n)).astype(np.int64)
    x = np.full((len(steps), nf), np.nan)
    x[ends] = mean.reshape(k, nf)
    resets = np.zeros(len(steps), np.bool_)
    resets[ends] = reset
    last_ts = np.maximum.reduceat(ts, g_at)[s_last]
    for i, lo, hi, lb, lt in zip(gs[s_first].tolist(), (ends - n + 1)[s_first].tolist(), (ends[s_last] + 1).tolist(),
                                 gb[s_last].tolist(), last_ts.tolist(), strict=True):
        r = rs[i]
        r.next_bucket, r.last_fed_ts = lb + 1, lt
        blocks[i] = StepBlock(steps[lo:hi], x[lo:hi], resets[lo:hi])
    return blocks
