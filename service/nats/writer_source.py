"""The ingest role's intake on NATS: the writers' consumer group over the readings stream.

Every writer process binds the same durable pull consumer (``nats.writer_durable``, filter
``p.>``, explicit acks): JetStream hands each message to one of them, so M writers share
the work the way an MQTT shared subscription does, and a writer that dies leaves its
unacknowledged messages to the others after ``ack_wait``.

Flow: a fetch loop on the link's event loop pulls batches; each batch is decoded and queued
for the ``BatchWriter`` in a worker thread (``asyncio.to_thread``), so a full writer queue
blocks that thread and the fetch loop waits for it (backpressure: nothing more is fetched,
JetStream keeps the rest) while the loop itself stays free to send acks. A message is
acknowledged only once the writer made its readings durable (store or spool), exactly like
the MQTT path; the ack is sent from the loop (``acker`` runs on the writer's thread).

Refused messages are counted and reported (``RefusalReporter``); a message with no reading
left is terminated (``AckTerm``) at once so it is never redelivered, one with some good
readings is acknowledged after those are durable. The received time the decoder gets is
the message's JetStream timestamp (when the stream stored it), not wall time: a
redelivery decodes to the same readings, so the store overwrites the same points.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from service.config import NatsSettings
from service.ingest.decode import Decoder, Refusal
from service.ingest.refusals import RefusalReporter
from service.ingest.writer import AckToken, BatchWriter, Item, Sink
from service.nats import provision, subjects
from service.nats.link import NatsLink

log = logging.getLogger(__name__)

# A message not acknowledged within this is redelivered (to any writer). Long enough for a
# store outage to be noticed (the store's own timeouts) and the batch spooled and acked.
ACK_WAIT_S = 120.0
# Unacknowledged messages the consumer allows at once, over all writers: bounds what a
# stuck writer (full spool) holds; past it JetStream delivers nothing more until acks come.
MAX_ACK_PENDING = 50_000
_RETRY_MAX_S = 2.0


class _Connected:
    """``connected.is_set()`` like the MQTT source's event, answered by the link."""

    def __init__(self, source: NatsReadingsSource) -> None:
        self._source = source

    def is_set(self) -> bool:
        return self._source.subscribed.is_set() and self._source.link.connected


class NatsReadingsSource:
    """One writer's member of the consumer group: fetch, decode, queue for the writer, ack."""

    def __init__(
        self,
        settings: NatsSettings,
        decoder: Decoder,
        writer: BatchWriter,
        reporter: RefusalReporter,
        live: Sequence[Sink] = (),
        names: provision.Names | None = None,
        name: str = "sensorcast-writer",
    ) -> None:
        self.settings = settings
        self.decoder = decoder
        self.writer = writer
        self.reporter = reporter
        self.live = list(live)  # normally none: inference replicas consume the stream themselves
        self.names = names or provision.Names.of(settings)
        self.link = NatsLink(settings, name)
        self.connected = _Connected(self)
        self.subscribed = threading.Event()  # provisioned and bound to the durable
        self.sessions_lost = 0  # the MQTT source's status fields: JetStream has no sessions to lose
        self.last_session_lost: float | None = None
        self._closing = False
        self._task: Future[None] | None = None
        self._lock = threading.Lock()
        self._pending: dict[int, Msg] = {}  # ack token key -> message, until the writer acks it
        self._keys = itertools.count(1)
        self._acks: list[Future[None]] = []
        self.acked = 0  # messages acknowledged after the durable hand-off
        self.terminated = 0  # refused messages ended with AckTerm
        self.fetched = 0
        self.redelivered = 0  # messages this writer got that were delivered before

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Connect (ConnectionError after 30 s without a server), then fetch in the background."""
        self.link.start()
        self._task = self.link.spawn(self._run())

    def loop_alive(self) -> bool:
        """The link's loop runs and the fetch loop has not ended (the watchdog's intake check)."""
        return self.link.alive() and self._task is not None and (not self._task.done() or self._closing)

    def close_intake(self) -> None:
        """Fetch nothing more; what was fetched and queued is still acknowledged when durable."""
        self._closing = True

    def stop(self, timeout_s: float = 10.0) -> None:
        self._closing = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                self._task.result(timeout_s)
        deadline = time.monotonic() + timeout_s
        with self._lock:
            acks = list(self._acks)
        for fut in acks:  # the acks the writer's last flush queued
            with contextlib.suppress(Exception):
                fut.result(max(0.1, deadline - time.monotonic()))
        self.link.close()  # drains: buffered acks reach the server first
        self.subscribed.clear()

    # --- the fetch loop (on the link's loop) ------------------------------------------------
    async def _run(self) -> None:
        js = self.link.js
        psub = None
        delay = 0.2
        while not self._closing:
            try:
                if psub is None:
                    psub = await self._bind(js)
                    self.subscribed.set()
                    log.info("NATS: writer bound to consumer %s on stream %s", self.settings.writer_durable,
                             self.names.readings)
                try:
                    msgs = await psub.fetch(self.settings.fetch_batch, timeout=1.0)
                except TimeoutError:  # nats-py's own, or asyncio's from inside fetch
                    continue  # nothing to do for a second
                self.fetched += len(msgs)
                await asyncio.to_thread(self._take, msgs)
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as e:  # elections, reconnects: JetStream answers nothing for a few seconds
                if self._closing:
                    break
                log.warning("NATS: fetching readings failed (%s: %s); retrying in %.1f s", type(e).__name__, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
        if psub is not None:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()  # the durable consumer stays: the other writers use it

    async def _bind(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        await provision.ensure_all(js, self.settings, self.names)
        durable = self.settings.writer_durable
        config = ConsumerConfig(
            durable_name=durable, name=durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
            filter_subject=subjects.readings_subjects(), ack_wait=ACK_WAIT_S, max_ack_pending=MAX_ACK_PENDING,
        )
        try:  # every writer asks: the same config is accepted again, so the first one creates it
            await provision.retrying(f"consumer {durable}", lambda: js.add_consumer(self.names.readings, config))
        except nats.js.errors.BadRequestError as e:  # exists with another config (older settings): use it
            log.warning("NATS: consumer %s exists with other settings (%s); binding to it as it is", durable, e)
        return await js.pull_subscribe_bind(durable=durable, stream=self.names.readings)

    # --- decode and queue (a worker thread, one batch at a time) --------------------------
    def _take(self, msgs: list[Msg]) -> None:
        for i, msg in enumerate(msgs):
            if self._closing or self.writer.stopping:
                # Handed back at once, so another writer takes them without waiting ack_wait.
                for rest in msgs[i:]:
                    self._settle(rest, "nak")
                return
            try:
                self._take_one(msg)
            except Exception as e:  # one bad message must not stop intake (see service/ingest/mqtt.py)
                self._refuse_internal(msg, e)

    def _take_one(self, msg: Msg) -> None:
        try:
            topic = subjects.topic_of(msg.subject)
        except ValueError as e:
            self.reporter.report("nats", msg.subject[:200], msg.data, [Refusal("bad_topic", str(e))])
            self._settle(msg, "term")
            return
        if msg.metadata.num_delivered > 1:
            self.redelivered += 1  # another writer died or stalled holding it, or our ack was lost
        result = self.decoder.decode(topic, msg.data, subjects.js_time_ns(msg))
        if result.refusals:
            self.reporter.report("nats", topic, msg.data, result.refusals)
        if not result.readings:
            self._settle(msg, "term")  # nothing of it will ever be stored: never redeliver it
            return
        for sink in self.live:
            try:
                sink(result.readings)
            except Exception:
                log.exception("live sink %r failed on %d readings", sink, len(result.readings))
        key = next(self._keys)
        with self._lock:
            self._pending[key] = msg
        token: AckToken = (key, 1, 0)
        if not self.writer.put(Item(result.readings, token)):  # blocks while the queue is full
            with self._lock:
                self._pending.pop(key, None)
            self._settle(msg, "nak")  # the writer is stopping

    def _refuse_internal(self, msg: Msg, exc: Exception) -> None:
        try:
            self.reporter.internal("nats", msg.subject[:200], msg.data, exc)
        except Exception:
            log.exception("refused (internal) from subject %r; reporting it failed too", msg.subject[:200])
        self._settle(msg, "term")

    def _settle(self, msg: Msg, how: str) -> None:
        async def send() -> None:
            await (msg.term() if how == "term" else msg.nak())
            if how == "term":
                self.terminated += 1

        self._track(self.link.spawn(send()))

    def _track(self, fut: Future[Any]) -> None:
        with self._lock:
            self._acks = [f for f in self._acks if not f.done()]
            self._acks.append(fut)

    # --- acknowledgements (the writer's thread) ---------------------------------------------
    def ack(self, tokens: list[AckToken]) -> None:
        with self._lock:
            msgs = [m for m in (self._pending.pop(key, None) for key, _, _ in tokens) if m is not None]
        if msgs:
            self._track(self.link.spawn(self._ack_all(msgs)))

    async def _ack_all(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            try:
                await msg.ack()
                self.acked += 1
            except Exception as e:  # disconnected: JetStream redelivers after ack_wait (same points)
                log.warning("NATS: ack failed (%s); the message will be redelivered", e)

    # --- our own publishes -------------------------------------------------------------------
    def publish_dead_letter(self, topic: str, body: bytes) -> None:
        """A refused message's report on the dead-letter topic's subject (core NATS: MQTT
        subscribers on NATS's MQTT port see it)."""
        self.link.spawn(self.link.nc.publish(subjects.subject_of(topic), body))
