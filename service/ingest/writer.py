"""The writer thread: batch readings, make them durable (store, else spool), then acknowledge.

Intake (the MQTT thread, the HTTP path) puts ``Item``s on a bounded queue and blocks when
it is full: a slow store means backpressure, never unbounded memory. The writer collects
items until ``batch_size`` readings or ``batch_interval_s``, then:

1. while the spool holds older batches, new ones join it (replay stays in order);
   otherwise it writes to the store, and on ``StoreError`` appends the batch to the spool;
2. only once the batch is in the store or fsync'd in the spool are its items acknowledged
   (``ack`` tokens handed to ``acker``, HTTP waiters released) and the sinks called;
3. when the spool is full too, nothing is acknowledged: the writer retries with backoff
   and the queue fills, so intake stops and the broker holds the rest.

Spooled batches are replayed oldest first whenever the store answers again, and on start.

What the store refuses for good (``StoreRejected``: a series key over 64 KiB, a point beyond
the retention policy...) never blocks: the batch is bisected (``store.rejections.isolate``),
the refused points go to the dead-letter file with the store's reason
(``store.deadletter``), the rest is written, and the batch counts as durable; the same for
a spooled batch on replay, so the spool moves on. Credentials refused (``StoreAuthError``)
and everything else are transient: spool and retry.

The thread survives its own bugs: an unexpected exception in a flush or replay is logged
with its traceback, counted (``sensorcast_writer_errors_total``) and the loop goes on; the
readings of that flush are not acknowledged (the broker redelivers them after the next
reconnect; HTTP callers get an error). ``is_alive()`` tells a watchdog the thread runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from service.errors import SpoolFullError, SpoolReadError, StoreAuthError, StoreError, StoreRejected
from service.ingest.intake import Intake
from service.metrics import Metrics
from service.records import Reading
from service.store.base import Store
from service.store.deadletter import FILE_NAME, DeadLetter
from service.store.rejections import MAX_ISOLATE_REQUESTS, isolate
from service.store.spool import Spool

log = logging.getLogger(__name__)

Sink = Callable[[list[Reading]], None]
AckToken = tuple[int, int, int]  # (mid, qos, connection generation)

# Retry pacing while the store is down: fast enough to notice it is back within a
# second, slow enough not to spin on a dead connection.
_RETRY_MIN_S = 0.2
_RETRY_MAX_S = 2.0
# Conditions that persist (refused credentials, an unreadable spool, a bug hit on every
# flush) are logged again at most this often, so the log shows them without flooding.
_RELOG_S = 60.0


@dataclass(slots=True)
class Item:
    readings: list[Reading]
    ack: AckToken | None = None
    done: threading.Event | None = None
    ok: bool = False


@dataclass(slots=True)
class WriterState:
    store_ok: bool = True
    last_error: str | None = None
    stored: int = 0
    spooled: int = 0


class BatchWriter:
    def __init__(
        self,
        store: Store,
        spool: Spool,
        metrics: Metrics,
        batch_size: int,
        batch_interval_s: float,
        queue_max: int,
        sinks: Sequence[Sink] = (),
        acker: Callable[[list[AckToken]], None] | None = None,
        dead_letter: DeadLetter | None = None,
        isolate_max_requests: int = MAX_ISOLATE_REQUESTS,
    ) -> None:
        self.store = store
        self.spool = spool
        self.metrics = metrics
        # Next to the spool: same volume, writable whenever the spool is, one owner (its flock).
        self.dead_letter = dead_letter or DeadLetter(spool.dir / FILE_NAME, metrics)
        self.isolate_max_requests = isolate_max_requests
        self.batch_size = batch_size
        self.interval = batch_interval_s
        self.sinks = list(sinks)
        self.acker = acker
        self.queue: Intake[Item] = Intake(queue_max)
        self._in_mqtt = metrics.readings_in.labels("mqtt")
        self.state = WriterState()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0
        self._retry_s = _RETRY_MIN_S
        self._stored = metrics.readings_stored
        self._logged_at: dict[str, float] = {}
        self._update_spool_metrics()

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self.spool.acquire()  # raises StoreError when another process owns the spool
        self._thread = threading.Thread(target=self._run, name="sensorcast-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Flush what is queued (as far as the store or spool can take it) and stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("writer did not stop within %.0f s; unacknowledged readings stay with the broker", timeout_s)
                return  # still running: keep the spool locked
        self.spool.close()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def is_alive(self) -> bool:
        """True while the writer thread runs (False before ``start`` and after it ended)."""
        return self._thread is not None and self._thread.is_alive()

    def put(self, item: Item, timeout_s: float | None = None) -> bool:
        """Queue ``item``, blocking while the queue is full (backpressure)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._stop.is_set():
            if self.queue.put(item, 0.25):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return False

    # --- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        self._guarded(self._replay)  # whatever a previous run left in the spool goes first
        while True:
            items = self._collect()
            if items:
                self._flush(items)
            elif self._stop.is_set():
                break
            if len(self.spool) and time.monotonic() >= self._retry_at:
                self._guarded(self._replay)

    def _guarded(self, step: Callable[[], None]) -> bool:
        """Run one step of the loop; a bug in it is logged and counted, never fatal."""
        try:
            step()
            return True
        except Exception:
            self.metrics.writer_errors.inc()
            if self._due("unexpected"):
                log.exception("writer: unexpected error (counted in sensorcast_writer_errors_total; the writer goes on)")
            time.sleep(_RETRY_MIN_S)  # a bug hit on every pass must not spin a core
            return False

    def _collect(self) -> list[Item]:
        items = self.queue.take(wait_s=0.1)
        if not items:
            return items
        n = sum(len(it.readings) for it in items)
        deadline = time.monotonic() + self.interval
        # Poll rather than wake per message: at 50k msg/s each 5 ms brings ~250 of them.
        while n < self.batch_size and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.005))
            more = self.queue.take()
            items += more
            n += sum(len(it.readings) for it in more)
        return items

    def _flush(self, items: list[Item]) -> None:
        if not self._guarded(lambda: self._flush_items(items)):
            # Not known durable: no acknowledgement (the broker redelivers after a reconnect and
            # the store overwrites what did land); HTTP callers are told it failed.
            for it in items:
                if it.done is not None and not it.done.is_set():
                    it.done.set()

    def _flush_items(self, items: list[Item]) -> None:
        readings = [r for it in items for r in it.readings]
        # Stores take at most batch_size per call; the acks wait for all the chunks.
        for i in range(0, max(1, len(readings)), self.batch_size):
            if not self._durable_chunk(items, readings[i : i + self.batch_size]):
                return
        self._in_mqtt.inc(sum(len(it.readings) for it in items if it.done is None))
        self._release(items, readings)

    def _durable_chunk(self, items: list[Item], readings: list[Reading]) -> bool:
        while not self._make_durable(readings):
            if self._stop.is_set():
                log.error(
                    "stopping with %d readings neither stored nor spooled: not acknowledged, "
                    "the broker will redeliver them", len(readings)
                )
                for it in items:
                    if it.done is not None:
                        it.done.set()
                return False
            time.sleep(self._retry_s)
            self._retry_s = min(self._retry_s * 2, _RETRY_MAX_S)
            if len(self.spool):
                self._replay()
        return True

    def _release(self, items: list[Item], readings: list[Reading]) -> None:
        # Durable: now, and only now, acknowledge and feed the sinks.
        tokens = [it.ack for it in items if it.ack is not None]
        if tokens and self.acker is not None:
            try:
                self.acker(tokens)
            except Exception:
                log.exception("acknowledging %d messages failed; the broker will redeliver", len(tokens))
        for it in items:
            if it.done is not None:
                it.ok = True
                it.done.set()
        if readings:
            for sink in self.sinks:
                try:
                    sink(readings)
                except Exception:
                    log.exception("sink %r failed on a batch of %d readings", sink, len(readings))

    def _make_durable(self, readings: list[Reading]) -> bool:
        if not readings:
            return True
        if not len(self.spool):
            try:
                with self.metrics.store_write_latency.time():
                    self._write(readings)
                self._store_up()
                return True
            except StoreError as e:
                self._store_down(e)
            except Exception as e:  # a bug in a store must not kill the writer: spool instead
                log.exception("store write raised unexpectedly")
                self._store_down(e)
        was_full = self.spool.full
        try:
            self.spool.append(readings)
            self.state.spooled += len(readings)
            self._update_spool_metrics()
            return True
        except SpoolFullError as e:
            if not was_full:  # log once per episode
                log.error("%s: no longer acknowledging; the broker keeps the readings", e)
            self._update_spool_metrics()
            return False
        except StoreError as e:
            log.error("spool write failed: %s", e)
            self._update_spool_metrics()
            return False

    def _write(self, readings: list[Reading]) -> None:
        """Store ``readings``; points refused for good are isolated and dead-lettered.

        Raises ``StoreError`` when the failure is transient: then nothing was dead-lettered
        and the whole batch is retried later (what landed meanwhile is overwritten).
        """
        try:
            self.store.write(readings)
            refused = 0
        except StoreRejected as e:
            rejected = isolate(self.store.write, readings, e, self.isolate_max_requests)
            self.dead_letter.record(rejected)
            refused = len(rejected)
        self._stored.inc(len(readings) - refused)
        self.state.stored += len(readings) - refused

    def _replay(self, budget_s: float = 1.0) -> None:
        """Move spooled batches into the store, oldest first, until one fails.

        At most ``budget_s`` per call: new intake (which joins the spool meanwhile) keeps
        moving, so paho's thread never blocks long enough to miss its keepalive. A batch
        with points the store refuses for good is settled like a live one (``_write``).
        """
        deadline = time.monotonic() + budget_s
        try:
            while time.monotonic() < deadline:
                try:
                    head = self.spool.oldest()
                except SpoolReadError as e:
                    self._spool_unreadable(e)
                    break
                if head is None:
                    break
                entry, readings = head
                try:
                    self._write(readings)
                except Exception as e:
                    if not isinstance(e, StoreError):
                        log.exception("store write raised unexpectedly during replay")
                    self._store_down(e)
                    break
                self.spool.remove(entry)
                self._store_up()
                if self._stop.is_set() and not self.queue.empty():
                    break
        finally:
            self._update_spool_metrics()

    # --- bookkeeping ---------------------------------------------------------------------
    def _store_up(self) -> None:
        if not self.state.store_ok:
            log.info("store is back; spool holds %d readings to replay", self.spool.readings)
        self.state.store_ok = True
        self._retry_s = _RETRY_MIN_S

    def _store_down(self, e: Exception) -> None:
        self.metrics.store_errors.inc()
        if isinstance(e, StoreAuthError):
            # A configuration error, not an outage: loud, and again while it lasts. Transient
            # on purpose: readings wait in the spool until an operator fixes the credentials.
            if self._due("auth") or self.state.store_ok:
                log.error("store refused our credentials; spooling until fixed: %s", e)
        elif self.state.store_ok:
            log.warning("store write failed, spooling: %s", e)
        self.state.store_ok = False
        self.state.last_error = str(e)[:300]
        self._retry_at = time.monotonic() + self._retry_s
        self._retry_s = min(self._retry_s * 2, _RETRY_MAX_S)

    def _spool_unreadable(self, e: SpoolReadError) -> None:
        # The batch stays where it is (it was acknowledged); new batches keep joining the spool.
        if self._due("spool_read"):
            log.error("%s", e)
        self._retry_at = time.monotonic() + self._retry_s
        self._retry_s = min(self._retry_s * 2, _RETRY_MAX_S)

    def _due(self, what: str) -> bool:
        """True when ``what`` was not logged within ``_RELOG_S`` (and marks it logged now)."""
        now = time.monotonic()
        if now - self._logged_at.get(what, -1e9) < _RELOG_S:
            return False
        self._logged_at[what] = now
        return True

    def _update_spool_metrics(self) -> None:
        self.metrics.spool_depth.set(self.spool.readings)
        self.metrics.spool_bytes.set(self.spool.bytes)
        self.metrics.spool_full.set(1 if self.spool.full else 0)
