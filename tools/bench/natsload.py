"""Load and inspection helpers for the scale-out benchmark (tools/bench/scale.py) on NATS.

The publisher sends readings with core NATS on the unmapped device subject
``sensors.<device>.<quantity>``, exactly what NATS's MQTT listener turns a device's
publish into, so the servers' mapping picks the partition. Each message carries a reply
inbox: JetStream answers it with a publish ack once the reading is stored, and at most
``window`` messages are unacknowledged at a time (a JetStream publish awaited one by one
would measure round trips, not the servers). All of it runs on a ``NatsLink`` loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BucketNotFoundError, NoKeysError, NotFoundError

from service.config import NatsSettings
from service.nats import provision, subjects

QUANTITIES = ("temp", "hum", "press", "volt")
CADENCE_S = 60.0  # the kit model's cadence (tools/bench/inference.py builds the same model)
CADENCE_NS = round(CADENCE_S * 1e9)
T0_NS = 1_700_000_000 // 60 * CADENCE_NS  # cadence-aligned: each reading fills its bucket exactly


def fnv1a32(text: str) -> int:
    """The hash of nats-server's ``partition(n, ...)`` mapping (checked against a server by the bench)."""
    h = 0x811C9DC5
    for b in text.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def partition_of_device(device: str, partitions: int) -> int:
    return fnv1a32(device) % partitions


@dataclass(frozen=True, slots=True)
class Fleet:
    """``devices`` x ``QUANTITIES[:quantities]`` univariate streams with deterministic values."""

    devices: int
    quantities: int = 4
    order: str = "device"  # see messages()

    @property
    def streams(self) -> int:
        return self.devices * self.quantities

    def device(self, i: int) -> str:
        return f"dev{i:06d}"

    def values(self, k: int) -> np.ndarray:
        """Round ``k``'s value for every stream, (streams,), in publishing order (device-major)."""
        s = np.arange(self.streams)
        phase = (s * 0.6180339887) % 1.0 * 2 * math.pi
        out: np.ndarray = 20.0 + 3.0 * np.sin(k / 8.0 + phase) + 0.1 * np.sin(k * 1.7 + 3 * phase)
        return out

    def messages(self, rounds: Iterable[int]) -> Iterator[tuple[str, bytes]]:
        """(subject, payload) of each reading, round after round; timestamps one cadence apart.
        ``order`` "device": a device's quantities one after another (a device publishing them
        together); "quantity": every device's first quantity, then every device's second, ..."""
        qs = QUANTITIES[: self.quantities]
        nq = len(qs)
        for k in rounds:
            ts = T0_NS + k * CADENCE_NS
            vals = self.values(k).tolist()
            if self.order == "device":
                for i in range(self.devices):
                    dev = self.device(i)
                    for j, q in enumerate(qs):
                        yield f"sensors.{dev}.{q}", b'{"ts":%d,"value":%.4f}' % (ts, vals[i * nq + j])
            else:
                for j, q in enumerate(qs):
                    for i in range(self.devices):
                        yield f"sensors.{self.device(i)}.{q}", b'{"ts":%d,"value":%.4f}' % (ts, vals[i * nq + j])


@dataclass(frozen=True, slots=True)
class Published:
    messages: int
    seconds: float
    cpu_s: float  # this process's CPU over the run (publisher and the link's loop)
    refused: int  # publish acks that carried an error

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else math.nan


async def publish(nc: Client, messages: Iterator[tuple[str, bytes]], window: int = 4096,
                  rate: float | None = None, stop: asyncio.Event | None = None,
                  ack_timeout_s: float = 60.0) -> Published:
    """Publish every message (or until ``stop``), paced at ``rate``/s when given; returns once all are acked."""
    inbox = nc.new_inbox()
    state = {"acked": 0, "refused": 0, "need": 0}
    wake = asyncio.Event()

    async def on_ack(msg: Msg) -> None:
        state["acked"] += 1
        if b'"error"' in msg.data:
            state["refused"] += 1
        if state["acked"] >= state["need"]:
            wake.set()

    async def wait_acked(upto: int) -> None:
        state["need"] = upto
        while state["acked"] < upto:
            wake.clear()
            before = state["acked"]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), ack_timeout_s)
            if state["acked"] == before:
                raise TimeoutError(f"NATS: no publish ack for {ack_timeout_s} s ({upto - before} outstanding)")

    sub = await nc.subscribe(inbox, cb=on_ack, pending_msgs_limit=10 * window + 1000)
    await nc.flush()
    t0, c0 = time.perf_counter(), time.process_time()
    sent = 0
    slot = 0.01
    per_slot = max(1, int((rate or 0) * slot))
    nxt = t0
    try:
        for subject, payload in messages:
            if stop is not None and stop.is_set():
                break
            await nc.publish(subject, payload, reply=inbox)
            sent += 1
            if sent - state["acked"] > window:
                await wait_acked(sent - window // 2)
            if rate and sent % per_slot == 0:
                nxt += slot
                if (pause := nxt - time.perf_counter()) > 0:
                    await asyncio.sleep(pause)
        await nc.flush()
        await wait_acked(sent)
    finally:
        await sub.unsubscribe()
    return Published(sent, time.perf_counter() - t0, time.process_time() - c0, state["refused"])


async def check_mapping(nc: Client, fleet: Fleet, partitions: int, probes: int = 64) -> int:
    """Publish ``probes`` devices' subjects and compare the partition the servers chose with
    ``partition_of_device``; returns the mismatches. Run before the readings stream exists
    (core NATS only: the probes must not become readings)."""
    got: dict[str, int] = {}

    async def on_msg(msg: Msg) -> None:
        got[msg.subject.split(".")[3]] = subjects.partition_of(msg.subject)

    sub = await nc.subscribe(subjects.readings_subjects(), cb=on_msg)
    await nc.flush()
    for i in range(min(probes, fleet.devices)):
        await nc.publish(f"sensors.{fleet.device(i)}.probe", b"{}")
    await nc.flush()
    deadline = time.monotonic() + 5
    while len(got) < min(probes, fleet.devices) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await sub.unsubscribe()
    return sum(1 for dev, p in got.items() if partition_of_device(dev, partitions) != p) + (
        min(probes, fleet.devices) - len(got))


async def partition_counts(js: JetStreamContext, stream: str, partitions: int) -> list[int]:
    """Messages held per partition, from an ephemeral consumer's pending count on each ``p.<n>.>``."""
    counts = []
    for p in range(partitions):
        info = await js.add_consumer(stream, ConsumerConfig(
            filter_subject=subjects.partition_filter(p), deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE, inactive_threshold=30.0))
        counts.append(int(info.num_pending or 0))
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(stream, info.name or "")
    return counts


async def fetch_floor(js: JetStreamContext, stream: str, counts: Sequence[int],
                      batch: int) -> tuple[Published, float]:
    """Every partition read once, as a replica reads it (an ephemeral pull consumer per partition,
    no acks, fetches of ``batch``), all at once on this loop and nothing done with the messages:
    the client's and the servers' cost per message before any decoding or inference; and the
    seconds the consumers took to make."""
    cfg = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=60.0,
                         mem_storage=True, num_replicas=1)

    t0, c0 = time.perf_counter(), time.process_time()
    subs = []  # made one after another: on a big stream each takes the server a while (2.9.10)
    for p in range(len(counts)):
        subs.append(await js.pull_subscribe(subjects.partition_filter(p), durable=None, stream=stream, config=cfg))
    made_s = time.perf_counter() - t0

    async def drain(p: int) -> int:
        n = 0
        try:
            while n < counts[p]:
                with contextlib.suppress(TimeoutError):
                    n += len(await subs[p].fetch(batch, timeout=5))
        finally:
            await subs[p].unsubscribe()
        return n

    got = await asyncio.gather(*(drain(p) for p in range(len(counts))))
    return Published(sum(got), time.perf_counter() - t0, time.process_time() - c0, 0), made_s


async def reset_ownership(js: JetStreamContext, settings: NatsSettings) -> None:
    """Forget every lease, checkpoint and alert state (the readings stay): the next replicas start
    from the first retained reading, as a fresh deployment would."""
    names = provision.Names.of(settings)
    for bucket in (names.leases, names.ckpt, names.alert_state):
        with contextlib.suppress(NotFoundError, BucketNotFoundError):
            await js.delete_key_value(bucket)
    with contextlib.suppress(NotFoundError, BucketNotFoundError):
        await js.delete_object_store(names.state)
    await provision.ensure_all(js, settings)


async def lease_owners(js: JetStreamContext, settings: NatsSettings) -> dict[int, str]:
    """partition -> the replica holding its lease now (keys ``p<n>`` of the leases bucket)."""
    kv = await js.key_value(provision.Names.of(settings).leases)
    try:
        keys = await kv.keys()
    except NoKeysError:
        return {}
    owners: dict[int, str] = {}
    for key in keys:
        if key.startswith("p") and key[1:].isdigit():
            with contextlib.suppress(Exception):  # expired between keys() and get()
                entry = await kv.get(key)
                owners[int(key[1:])] = (entry.value or b"").decode(errors="replace")
    return owners
