"""Warm-up and catch-up: history for new and restored streams, read off the engine's lock.

A new stream (or one whose model changed) reads its recent history from the store before
its first live step; a stream restored from a checkpoint (or from its evicted state) that
comes back after a short gap replays the gap from the store. The reads run on a reader
thread, batched (one ``read_last_many`` for every stream waiting with the same history
length), so the engine's lock is never held while the store answers.

A stream whose read is in flight has a ``ticket``: its live readings wait in its pending
buckets (``resample_batch.py``) and it is not stepped. The tick that asked waits up to ``streams.warmup_wait_s``
for the answer *without* the lock (the other streams were stepped already); an answer that
comes later is applied under the lock by a later tick. Either way history goes in before
the buffered live readings are stepped, so the result is the same as a synchronous read.
A read that fails, or takes longer than ``GIVE_UP_S``, lets its streams go on live.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from service.config import Settings
from service.errors import StoreError
from service.records import Reading, StreamKey
from service.store.base import Store
from service.streams.lane import Stream

if TYPE_CHECKING:
    from service.streams.resample_batch import BatchResampler

log = logging.getLogger(__name__)

_F32_MAX = float(np.finfo(np.float32).max)
HISTORY_SLACK = 2  # extra buckets read for warm-up beyond the model's need
# Catch-up after a restore reads this many readings per missed bucket (streams sending
# more often than that are caught up on their newest part, the rest bridged as missing).
CATCH_UP_PER_BUCKET = 4
GIVE_UP_S = 30.0  # a read in flight this long: its streams go on without history
_IDLE_EXIT_S = 5.0  # the reader thread ends after this long without work (restarted on demand)

Resolve = Callable[[Stream, str], None]  # resolve a firing alert of a stream that starts over (reason)


@dataclass(eq=False)
class Read:
    """One batch of history wanted: warm-up of new streams, or catch-up of restored ones."""

    ticket: int
    kind: Literal["warm", "catch_up"]
    streams: list[Stream]
    n: int  # readings per key
    now_ns: int
    submitted: float = field(default_factory=time.monotonic)
    history: dict[StreamKey, list[Reading]] | None = None
    error: Exception | None = None
    done: bool = False


class HistoryReader:
    """Runs ``read_last_many`` on its own thread; reads queued meanwhile share one query per length."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cv = threading.Condition()
        self._todo: list[Read] = []
        self._done: list[Read] = []
        self._thread: threading.Thread | None = None

    def submit(self, reads: list[Read]) -> None:
        with self._cv:
            self._todo.extend(reads)
            if self._thread is None:
                self._start()
            self._cv.notify_all()

    def _start(self) -> None:  # under self._cv
        self._thread = threading.Thread(target=self._run, name="engine-warmup", daemon=True)
        self._thread.start()

    def wait(self, reads: list[Read], timeout: float) -> bool:
        """Until every read in ``reads`` is answered (True) or ``timeout`` passed (False)."""
        with self._cv:
            return self._cv.wait_for(lambda: all(r.done for r in reads), timeout)

    def take_done(self) -> list[Read]:
        with self._cv:
            done, self._done = self._done, []
        return done

    def _run(self) -> None:
        try:
            self._serve()
        finally:  # however it ends, the next submit starts a new thread
            with self._cv:
                self._thread = None
                if self._todo:  # submitted while this one was ending
                    self._start()

    def _serve(self) -> None:
        while True:
            with self._cv:
                if not self._cv.wait_for(lambda: bool(self._todo), _IDLE_EXIT_S):
                    return  # idle: end (an engine dropped by its owner leaves no thread behind)
                batch, self._todo = self._todo, []
            by_n: dict[int, list[Read]] = {}
            for r in batch:
                by_n.setdefault(r.n, []).append(r)
            for n, group in by_n.items():
                keys = list({k: None for r in group for st in r.streams for k in st.keys})
                history: dict[StreamKey, list[Reading]] | None = None
                error: Exception | None = None
                try:
                    history = self._store.read_last_many(keys, n)
                except Exception as e:  # StoreError, or anything a store lets through: reported, never raised
                    error = e
                with self._cv:
                    for r in group:
                        r.history, r.error, r.done = history, error, True
                        self._done.append(r)
                    self._cv.notify_all()


class Warmup:
    """Which streams want history, the reads in flight, and putting their answers in."""

    def __init__(self, settings: Settings, store: Store | None, resolve: Resolve) -> None:
        self.settings = settings
        self._resolve = resolve
        self.reader = None if store is None else HistoryReader(store)
        self.need_history: dict[str, Stream] = {}
        self.restored: set[str] = set()  # restored streams not yet checked for a long gap
        self._in_flight: dict[int, Read] = {}
        self._tickets = 0

    # -- bookkeeping (under the engine's lock) -------------------------------------
    def new_stream(self, st: Stream) -> None:
        self.need_history[st.id] = st

    def restored_stream(self, st: Stream) -> None:
        self.need_history.pop(st.id, None)
        self.restored.add(st.id)

    def forget(self, st: Stream) -> None:
        self.need_history.pop(st.id, None)
        self.restored.discard(st.id)
        st.ticket = 0  # an answer still in flight is ignored

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # -- the tick -------------------------------------------------------------------
    def plan(self, resampler: BatchResampler, now: int) -> list[Read]:
        """Under the lock, after intake: the reads this tick wants (their streams get a ticket).

        A restored stream's first readings after a restart: a gap of up to ``max_gap_steps``
        is replayed from the store (it kept what arrived while we were down), so the state
        continues as if we had never stopped; a longer gap re-warms from the store.
        """
        reads: list[Read] = []
        slow = resampler.slow
        if self.restored and slow:
            limit = self.settings.streams.max_gap_steps
            catch_up: list[tuple[Stream, int]] = []
            for st in list(slow.values()):
                if st.id not in self.restored:
                    continue
                self.restored.discard(st.id)
                res = resampler.touch(st)
                first = res.first_pending_ts()
                nb = res.next_bucket
                if first is None:
                    continue
                if nb is None:  # saved before it was ever stepped (e.g. its warm-up was in flight)
                    self.need_history[st.id] = st
                    continue
                gap = res.bucket_of(first) - nb
                if 0 < gap <= limit:
                    catch_up.append((st, gap))
                elif gap > limit:
                    self._resolve(st, "gap")
                    st.lane.reset(np.array([st.row], np.intp))
                    resampler.restart(st)
                    self.need_history[st.id] = st
            if catch_up and self.reader is not None:
                n = (max(gap for _, gap in catch_up) + 1) * CATCH_UP_PER_BUCKET
                reads.append(self._read("catch_up", [st for st, _ in catch_up], n, now))
        if self.need_history:
            warming = list(self.need_history.values())
            self.need_history.clear()
            for st in warming:
                resampler.touch(st)
            if self.reader is not None:
                by_need: dict[int, list[Stream]] = {}
                for st in warming:
                    by_need.setdefault(st.lane.table.warm_need + HISTORY_SLACK, []).append(st)
                reads += [self._read("warm", group, n, now) for n, group in by_need.items()]
        return reads

    def _read(self, kind: Literal["warm", "catch_up"], streams: list[Stream], n: int, now: int) -> Read:
        self._tickets += 1
        read = Read(self._tickets, kind, streams, n, now)
        for st in streams:
            st.ticket = read.ticket
        self._in_flight[read.ticket] = read
        return read

    def submit(self, reads: list[Read]) -> None:
        """Off the lock."""
        if reads and self.reader is not None:
            self.reader.submit(reads)

    def wait(self, reads: list[Read], timeout: float) -> bool:
        """Off the lock: True when every read in ``reads`` has been answered."""
        return self.reader is not None and self.reader.wait(reads, timeout)

    def apply(self, resampler: BatchResampler) -> None:
        """Under the lock: put answered history into the streams' pending buckets; those
        streams (and those of reads given up on) join the slow path to be stepped in this tick."""
        if self.reader is None or not self._in_flight:
            return
        for read in self.reader.take_done():
            if self._in_flight.pop(read.ticket, None) is not None:
                self._apply(read, resampler)
        now = time.monotonic()
        for read in [r for r in self._in_flight.values() if now - r.submitted > GIVE_UP_S]:
            del self._in_flight[read.ticket]
            log.warning("%s read for %d streams unanswered after %.0f s: they go on without it",
                        read.kind, len(read.streams), GIVE_UP_S)
            read.history, read.error = {}, None
            self._apply(read, resampler)

    def _apply(self, read: Read, resampler: BatchResampler) -> None:
        live = [st for st in read.streams if st.ticket == read.ticket]  # not dropped or moved meanwhile
        for st in live:
            st.ticket = 0
            resampler.touch(st)
        if read.error is not None:
            e = read.error
            level = logging.WARNING if isinstance(e, StoreError) else logging.ERROR
            what = "warming live" if read.kind == "warm" else "bridging their gaps"
            log.log(level, "%s read failed for %d streams, %s: %s", read.kind, len(read.streams), what, e)
            return
        history = read.history or {}
        added = 0
        for st in live:
            res = resampler.touch(st)  # on the slow path since its read was planned
            if read.kind == "warm":
                cutoff = res.first_pending_ts()
                cutoff = read.now_ns + 1 if cutoff is None else cutoff
                lo, hi = cutoff - (st.lane.table.warm_need + HISTORY_SLACK) * st.lane.cadence_ns, cutoff
                lo -= 1  # warm-up takes readings from `lo + 1` on inclusive, catch-up after last_fed_ts
            else:
                first = res.first_pending_ts()
                if first is None:
                    continue
                lo, hi = res.last_fed_ts, first
            # In bulk (arrays, in the order read): the resampler buckets them with numpy.
            got = [history.get(key, []) for key in st.keys]
            n = sum(len(rs) for rs in got)
            if not n:
                continue
            try:
                ts = np.fromiter((r.ts_ns for rs in got for r in rs), np.int64, n)
            except OverflowError:  # a stored time beyond int64: the readings one by one
                added += sum(res.add(r.ts_ns, f, r.value) is None for f, rs in enumerate(got) for r in rs
                             if lo < r.ts_ns < hi and abs(r.value) < _F32_MAX)
                continue
            values = np.fromiter((r.value for rs in got for r in rs), np.float64, n)
            features = np.repeat(np.arange(len(got), dtype=np.int64), [len(rs) for rs in got])
            keep = (ts > lo) & (ts < hi) & (np.abs(values) < _F32_MAX)  # NaN compares False
            added += res.add_many(ts[keep], features[keep], values[keep])
        if read.kind == "catch_up":
            log.info("caught up %d restored streams with %d stored readings", len(live), added)
