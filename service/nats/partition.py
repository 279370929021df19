"""One partition's inference on a replica: its own Engine fed from the readings stream, in event time.

A ``PartitionWorker`` owns the partition while the replica holds its lease. Its thread:

1. claims the partition's checkpoint (``CheckpointStore.claim``: fences any older owner) and
   restores the engine from it (a tar of the engine's checkpoint directory, plus this
   worker's clock);
2. reads ``p.<n>.>`` with an ephemeral pull consumer (no acks: the checkpoint's sequence is
   the position) from the checkpoint's sequence + 1, or from the stream's start;
3. decodes each message with the ingest ``Decoder`` (topic from the subject, received time =
   the message's JetStream timestamp) and ticks the engine with EVENT TIME: ``now`` is the
   newest reading seen in the partition (capped by the server's receive time, so one device
   with a clock ahead cannot push it), never the wall clock. A replay after failover
   therefore closes the same buckets with the same readings as the live run did;
4. every ``nats.checkpoint_interval_s``: waits until every alert fired so far is
   acknowledged by JetStream (``outputs.flush``), checkpoints, and saves it with the lease's
   epoch. ``Fenced`` (a newer owner wrote) or an expired lease stop the worker at once: its
   engine is dropped and nothing more leaves it.

Checkpoints hold fed state only: readings still waiting in a stream's open bucket (a device
stream missing a quantity, a bucket not yet ended) are not in them. The saved sequence is
therefore the one before the oldest message that brought such a reading; replaying the
messages after it re-feeds those readings and drops the rest as duplicates (counted
``sensorcast_late_dropped_total{reason=duplicate|late}``).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from service.config import Settings, StreamRules
from service.ingest.decode import Decoder
from service.metrics import Metrics
from service.nats import subjects
from service.nats.ckptstore import Checkpoint, CheckpointStore, Fenced
from service.nats.leases import Lease
from service.nats.link import NatsLink, why
from service.nats.provision import Names
from service.nats.ticks import Ticks
from service.records import Alert, Forecast
from service.runtime.registry import ModelRegistry
from service.streams.engine import Engine

log = logging.getLogger(__name__)

FETCH_WAIT_S = 0.25  # a fetch waits this long for messages: the latency of an idle partition's stop
CHECK_CONSUMER_AFTER = 8  # empty fetches in a row before the consumer is looked up (gone with a node?)
RENEW_IDLE_CONSUMER_AFTER = 60  # empty fetches in a row (~15 s) before the consumer is made anew anyway
MAX_REPLAY_INDEX = 2_000_000  # messages remembered for the replay start (see module doc)
WORKER_META = "worker.json"


class Flushable(Protocol):
    def flush(self, timeout_s: float) -> Any: ...


class PartitionWorker:
    def __init__(
        self,
        link: NatsLink,
        settings: Settings,
        partition: int,
        lease: Lease,
        store: CheckpointStore,
        registry: ModelRegistry,
        outputs: Flushable | None,
        *,
        metrics: Metrics,
        names: Names,
        decoder: Decoder | None = None,
        on_alert: Callable[[Alert], None] | None = None,
        on_forecast: Callable[[Forecast], None] | None = None,
        stream_rules: Callable[[str], StreamRules | None] | None = None,
        publish_forecasts: bool = False,
        valid_until: Callable[[], float] = lambda: float("inf"),
    ) -> None:
        self.link = link
        self.partition = partition
        self.lease = lease
        self.store = store
        self.outputs = outputs
        self.names = names
        self.decoder = decoder or Decoder(settings.ingest)
        self._on_alert, self._on_forecast = on_alert, on_forecast
        self._valid_until = valid_until  # monotonic deadline of the replica's lease renewals
        self.nats = settings.nats
        self.dir = Path(tempfile.mkdtemp(prefix=f"sc-p{partition}-"))
        streams = settings.streams.model_copy(update={"checkpoint_dir": self.dir / "state"})
        self.settings = settings.model_copy(update={"streams": streams})
        self.engine = Engine(self.settings, registry, None, metrics, on_alert=self._alert,
                             on_forecast=self._forecast, stream_rules=stream_rules)
        self.engine.publish_forecasts = publish_forecasts
        self.engine.status_gauges = False  # the replica sets them, summed over its partitions
        self.clock_ns = 0  # event time: the newest reading seen (capped by its receive time)
        self.applied = 0  # stream sequence of the last message fed to the engine
        self.saved_seq: int | None = None
        self.fenced = False
        self.first_forecast_at: float | None = None  # wall time of the first step after (re)start
        # (seq, newest reading ts) of messages since the replay start; readings pending longer than
        # MAX_REPLAY_INDEX messages are not worth a replay, so the oldest fall off
        self._index: deque[tuple[int, int]] = deque(maxlen=MAX_REPLAY_INDEX)
        self._stop = threading.Event()
        self._final = False
        self._live = True  # False once stopped: nothing more leaves this engine
        self._mute = False  # the partition is lost: drop its output at once
        self._thread: threading.Thread | None = None
        self._sub: Any = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"nats-partition-{self.partition}", daemon=True)
        self._thread.start()

    def stop(self, final_checkpoint: bool = False, timeout_s: float = 30.0) -> None:
        """Stop consuming; with ``final_checkpoint`` (a clean hand-over) save one last checkpoint."""
        self._final = final_checkpoint
        if not final_checkpoint:  # lost: nothing more leaves it, even from a tick under way
            self._mute = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def active(self) -> bool:
        return self._live and not self._stop.is_set()

    def _speaks(self) -> bool:
        return self._live and not self._mute and self._valid()

    def _valid(self) -> bool:
        return time.monotonic() < self._valid_until()

    def _run(self) -> None:
        try:
            ckpt = self.link.run(self.store.claim(self.partition, self.lease.epoch), 60)
            self._restore(ckpt)
            self._subscribe()
            self._loop()
            if self._final and self._valid() and not self.fenced:
                self.checkpoint()
        except Fenced:
            self.fenced = True
            log.warning("partition %d: fenced (a newer owner took it): stopped, its state dropped", self.partition)
        except Exception:
            log.exception("partition %d: worker failed; the partition is given up", self.partition)
        finally:
            self._live = False
            self._unsubscribe()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _loop(self) -> None:
        next_ckpt = time.monotonic() + self.nats.checkpoint_interval_s
        empty = 0
        while not self._stop.is_set():
            if not self._valid():
                log.warning("partition %d: lease gone (lost, released or not renewed in time): stopping", self.partition)
                return
            msgs = self._fetch()
            if msgs:
                empty = 0
                self._apply(msgs)
            else:
                empty += 1
                if empty % RENEW_IDLE_CONSUMER_AFTER == 0:
                    # A consumer made while the stream's leader was being elected was seen to
                    # deliver nothing for good though it existed and its stream grew: on a quiet
                    # partition a fresh one costs one request every ~15 s.
                    log.info("partition %d: nothing for %d fetches: a new consumer from sequence %d",
                             self.partition, empty, self.applied + 1)
                    self._unsubscribe()
                elif empty % CHECK_CONSUMER_AFTER == 0:
                    self._check_consumer()
            if time.monotonic() >= next_ckpt and not self._stop.is_set():
                next_ckpt = time.monotonic() + self.nats.checkpoint_interval_s
                if self.saved_seq != self.applied:
                    self.checkpoint()

    # -- output, only while the worker owns the partition ---------------------------------------
    def _alert(self, alert: Alert) -> None:
        if self._on_alert is not None and self._speaks():
            self._on_alert(alert)

    def _forecast(self, fc: Forecast) -> None:
        if self.first_forecast_at is None:
            self.first_forecast_at = time.time()
            log.info("partition %d: first forecast (%s)", self.partition, fc.stream_id)
        if self._on_forecast is not None and self._speaks():
            self._on_forecast(fc)

    # -- intake -------------------------------------------------------------------------------
    def _subscribe(self) -> None:
        start = self.applied + 1
        cfg = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if self.applied else DeliverPolicy.ALL,
            opt_start_seq=start if self.applied else None,
            ack_policy=AckPolicy.NONE,  # the position is the checkpoint's sequence, not acks
            inactive_threshold=60.0, mem_storage=True, num_replicas=1,
        )

        async def make() -> Any:
            return await self.link.js.pull_subscribe(subjects.partition_filter(self.partition), durable=None,
                                                     stream=self.names.readings, config=cfg)

        delay = 0.2
        while not self._stop.is_set():
            try:
                self._sub = self.link.run(make(), 10)
                log.info("partition %d: reading from sequence %d", self.partition, start)
                return
            except Exception as e:  # an election after a node died: retry
                log.info("partition %d: consumer not created (%s); retrying", self.partition, why(e))
                self._stop.wait(delay)
                delay = min(delay * 2, 2.0)

    def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None and self.link.alive():
            try:
                self.link.run(sub.unsubscribe(), 5)
            except Exception as e:  # the server drops an idle ephemeral consumer anyway
                log.debug("partition %d: unsubscribe: %s", self.partition, e)

    def _fetch(self) -> list[Any]:
        sub = self._sub
        if sub is None:
            self._subscribe()
            return []
        try:
            msgs: list[Any] = self.link.run(sub.fetch(self.nats.fetch_batch, timeout=FETCH_WAIT_S),
                                            FETCH_WAIT_S + 10)
            return msgs
        except TimeoutError:
            return []
        except Exception as e:  # connection blips: the next fetch (or a new consumer) goes on
            log.info("partition %d: fetch failed (%s)", self.partition, why(e))
            self._stop.wait(0.5)
            return []

    def _check_consumer(self) -> None:
        """An ephemeral consumer lives on one node; when that node dies the consumer is gone and
        fetches only time out: make a new one from the position reached."""
        sub = self._sub
        if sub is None:
            return
        try:
            info = self.link.run(sub.consumer_info(), 5)
        except NotFoundError:
            log.info("partition %d: consumer gone; a new one from sequence %d", self.partition, self.applied + 1)
            self._sub = None
            return
        except Exception as e:  # no answer (an election): try again at the next check
            log.info("partition %d: consumer lookup failed (%s)", self.partition, why(e))
            return
        if info.num_pending:
            # Messages wait but fetches bring none: seen after the stream's leader node died (the
            # consumer made during the election never delivers). A new one from the position reached.
            log.info("partition %d: consumer stalled with %d pending; a new one from sequence %d",
                     self.partition, info.num_pending, self.applied + 1)
            self._unsubscribe()

    def _apply(self, msgs: list[Any]) -> None:
        """Feed ``msgs`` in ticks that give what one tick per message would (see ``service.nats.ticks.Ticks``)."""
        if self._stop.is_set() or not self._valid():
            return  # nothing more is fed, so the position stays what the engine has
        ticks = Ticks(self.engine, self.clock_ns)
        applied = self.applied
        for msg in msgs:
            md = msg.metadata
            seq = int(md.sequence.stream)
            if seq <= applied:  # a new consumer may repeat what the old one gave
                continue
            received_ns = subjects.js_time_ns(msg)  # the server's time: the same on a replay
            try:
                got = self.decoder.decode(subjects.topic_of(msg.subject), msg.data, received_ns).readings
            except Exception:  # the writers count refusals; here a bad message only must not stop the partition
                log.exception("partition %d: message %d not decoded", self.partition, seq)
                got = []
            applied = seq
            if got:
                self._index.append((seq, ticks.add(got, received_ns)))
        ticks.flush()
        self.clock_ns, self.applied = ticks.clock, applied

    # -- checkpoints --------------------------------------------------------------------------
    def replay_from(self) -> int:
        """The stream sequence a new owner must read from to rebuild what the checkpoint lacks."""
        oldest = min(self.engine.unfed().values(), default=None)
        while self._index and (oldest is None or self._index[0][1] < oldest):
            self._index.popleft()  # everything it brought is fed (or dropped) already
        return self._index[0][0] if self._index and oldest is not None else self.applied + 1

    def checkpoint(self) -> bool:
        """Flush alerts, checkpoint the engine, save the tar with the lease's epoch; False: not now."""
        if self.outputs is not None:
            try:
                if self.outputs.flush(self.nats.lease_ttl_s) is False:
                    log.warning("partition %d: alerts not acknowledged yet: checkpoint later", self.partition)
                    return False
            except Exception as e:
                log.warning("partition %d: alert flush failed (%s): checkpoint later", self.partition, e)
                return False
        applied = self.applied
        seq = self.replay_from() - 1
        self.engine.checkpoint()
        blob = pack(self.settings.streams.checkpoint_dir, {"clock_ns": self.clock_ns, "applied": applied,
                                                            "seq": seq, "partition": self.partition})
        if not self._valid():
            return False
        self.link.run(self.store.save(self.partition, self.lease.epoch, seq, blob), 60)  # Fenced goes up
        self.saved_seq = applied
        log.debug("partition %d: checkpoint at sequence %d (%d bytes)", self.partition, seq, len(blob))
        return True

    def _restore(self, ckpt: Checkpoint | None) -> None:
        if ckpt is None:
            self.engine.use_event_time(0)
            log.info("partition %d: no checkpoint: from the stream's start", self.partition)
            return
        meta = unpack(ckpt.blob, self.settings.streams.checkpoint_dir)
        n = self.engine.restore()
        self.clock_ns = int(meta.get("clock_ns", 0))
        self.applied = ckpt.seq
        self.saved_seq = ckpt.seq
        self.engine.use_event_time(self.clock_ns)
        log.info("partition %d: restored %d streams (epoch %d), replaying from sequence %d",
                 self.partition, n, ckpt.epoch, ckpt.seq + 1)


def pack(directory: Path, meta: dict[str, Any]) -> bytes:
    """The engine's checkpoint files and the worker's ``meta``, as one uncompressed tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(directory.glob("*")) if directory.is_dir() else []:
            if path.is_file() and not path.name.startswith("."):
                tar.add(path, arcname=path.name)
        body = json.dumps(meta).encode()
        info = tarfile.TarInfo(WORKER_META)
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def unpack(blob: bytes, directory: Path) -> dict[str, Any]:
    """Files of ``pack`` into ``directory`` (plain files only); returns the worker's meta."""
    directory.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if not member.isfile() or name != member.name or name.startswith("."):
                log.warning("checkpoint entry %r ignored", member.name)
                continue
            f = tar.extractfile(member)
            if f is None:
                continue
            data = f.read()
            if name == WORKER_META:
                meta = json.loads(data)
            else:
                (directory / name).write_bytes(data)
    return meta

