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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.arrays import Col, RowArrays

NAN = math.nan


class Positions(RowArrays):
    """Where each row's stream stands in its buckets: the one record of it (see
    ``resample_batch.BatchResampler``, which alone writes it)."""

    next_bucket = Col(np.int64, fill=-1)  # the next bucket to feed; -1: nothing fed yet
    last_fed_ts = Col(np.int64, fill=0)  # newest reading time in the buckets fed
    has_pending = Col(np.bool_, fill=False, saved=False)  # readings wait in the stream's Resampler


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
        "_pending", "cadence_ns", "grace_ns", "last_fed_ts", "live_ns", "max_gap", "n_features", "next_bucket",
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

    def bucket_of(self, ts_ns: int) -> int:
        return -(-ts_ns // self.cadence_ns)

    def add(self, ts_ns: int, feature: int, value: float) -> str | None:
        """Merge one reading; returns the drop reason (``late``/``duplicate``) or None."""
        b = -(-ts_ns // self.cadence_ns)
        if self.next_bucket is not None and b < self.next_bucket:
            return "duplicate" if ts_ns == self.last_fed_ts else "late"
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
        return len(self._pending)

    def first_pending_ts(self) -> int | None:
        if not self._pending:
            return None
        return min(ts for b in self._pending.values() for _, ts in b)

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
        return now_ns if newest >= now_ns - self.live_ns else newest

    def ready(self, now_ns: int) -> list[Step]:
        """The steps that can be fed now, oldest first (and forget them)."""
        if not self._pending:
            return []
        now_ns = self.stream_clock(now_ns)
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
        if self.grace_ns and self._pending:
            g = max(self._pending) * self.cadence_ns + self.grace_ns  # the newest bucket's grace runs out
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

    def seek(self, next_bucket: int | None, last_fed_ts: int) -> None:
        """Set the position (pending readings stay)."""
        self.next_bucket = next_bucket
        self.last_fed_ts = last_fed_ts
