"""One partition worker on a real nats-server: event time makes the engine's output independent of
how messages are grouped into ticks, and a checkpoint taken while buckets are still open (a device
stream missing a quantity, a bucket not yet ended) plus the replay its successor does gives the same
forecasts and alerts as one uninterrupted engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest

from service.config import Settings
from service.metrics import Metrics
from service.nats import provision
from service.nats.ckptstore import CheckpointStore, Fenced
from service.nats.leases import Lease
from service.nats.link import NatsLink
from service.nats.outputs import names_for
from service.nats.partition import PartitionWorker, pack, unpack
from service.nats.ticks import Ticks
from service.records import Alert, Reading, StreamKey
from service.runtime.registry import ModelRegistry
from service.streams.engine import Engine
from tests.waiting import wait_until
from tools.localservers import NatsCluster
from tools.modelkit import KitSpec, write_model

C = 60 * 10**9
T0 = 1_700_000_000 // 60 * C
N = 60
DEVICES = ("d0", "d1", "d2")
SPIKES = {("d1", 20), ("d2", 33)}
SPEC = KitSpec(name="mv", features=("temp", "rpm"), mean=(20.0, 100.0), std=(3.0, 10.0), warmup_steps=5)


def readings() -> list[Reading]:
    """Each quantity in its own message, rpm some seconds after temp (so a device's bucket is
    half full between them), and d2 25 s into its buckets (they close on a later reading)."""
    rng = np.random.default_rng(3)
    out = []
    for i in range(N):
        for q, base, late in (("temp", 20.0, 0), ("rpm", 100.0, 5)):
            for d, dev in enumerate(DEVICES):
                v = float(base + np.sin(i / 6.0 + d) * 0.1 * base + rng.normal(0, 0.01 * base))
                if (dev, i) in SPIKES and q == "temp":
                    v += 40.0
                off = (25 if dev == "d2" else 0) + late
                out.append(Reading(StreamKey(dev, q), T0 + i * C - 10 * 10**9 + off * 10**9, v))
    return out


def engine_for(models: Path) -> tuple[Engine, list[Alert]]:
    alerts: list[Alert] = []
    m = Metrics()
    e = Engine(Settings(models={"dir": models, "watch": False}), ModelRegistry(models, 1, m), None, m,
               on_alert=alerts.append)
    e.use_event_time(0)
    return e, alerts


def per_message(models: Path, rs: list[Reading]) -> tuple[Engine, list[Alert]]:
    """The reference: one tick per message (here one reading each), the clock its newest reading."""
    e, alerts = engine_for(models)
    clock = 0
    for r in rs:
        clock = max(clock, r.ts_ns)
        e.accept([r])
        e.tick(now_ns=clock)
    return e, alerts


def outputs(e: Engine, alerts: list[Alert]) -> tuple[dict[str, np.ndarray], list[tuple[str, str, int]]]:
    fcs = {}
    for s in e.streams():
        f = e.forecast(s.id)
        assert f is not None, s.id
        fcs[s.id] = np.array(f.mean)
    return fcs, sorted({(a.stream_id, a.state, a.ts_ns) for a in alerts})


@pytest.mark.parametrize("fetch", [1, 3, 7, 1000])
def test_ticks_group_messages_without_changing_the_output(tmp_path: Path, fetch: int) -> None:
    """However fetches cut the stream, the worker's ticks give what one tick per message gives,
    though readings come out of time order across devices (some buckets close on other devices'
    readings before a late quantity comes)."""
    write_model(tmp_path / "m", SPEC)
    rs = readings()
    want = outputs(*per_message(tmp_path / "m", rs))
    e, alerts = engine_for(tmp_path / "m")
    far = 2**62  # received long after the readings' times: the cap does not bind
    for i in range(0, len(rs), fetch):
        ticks = Ticks(e, max((r.ts_ns for r in rs[:i]), default=0))
        for r in rs[i:i + fetch]:
            ticks.add([r], far)
        ticks.flush()
    got = outputs(e, alerts)
    assert sorted(want[0]) == sorted(got[0]) == list(DEVICES)
    for sid in want[0]:
        assert np.array_equal(want[0][sid], got[0][sid]), sid
    assert want[1] == got[1] and {s for s, _, _ in want[1]} == {d for d, _ in SPIKES}


SPEC_ONE = KitSpec(name="one", mean=(20.0,), std=(3.0,), warmup_steps=5)
HALF = KitSpec(name="half", cadence_s=0.5, mean=(20.0,), std=(3.0,), warmup_steps=5)


def half_second_readings() -> list[Reading]:
    """Buckets of 0.5 s (ending between whole seconds): d0 sends twice per bucket, d1 once at its
    end, between d0's two, so d1's reading closes d0's bucket before d0's second one comes."""
    rng = np.random.default_rng(5)
    step = 500_000_000
    out = []
    for i in range(1, 120):
        end = T0 + i * step
        spike = 30.0 if i == 70 else 0.0
        out.append(Reading(StreamKey("d0", "value"), end - 200_000_000, 20 + np.sin(i / 5) + rng.normal(0, 0.1) + spike))
        out.append(Reading(StreamKey("d1", "value"), end, 20 + np.cos(i / 5) + rng.normal(0, 0.1)))
        out.append(Reading(StreamKey("d0", "value"), end - 50_000_000, 20 + np.sin(i / 5) + rng.normal(0, 0.1) + spike))
    return out


@pytest.mark.parametrize("fetch", [2, 1000])
def test_ticks_split_where_a_bucket_closes_between_whole_seconds(tmp_path: Path, fetch: int) -> None:
    write_model(tmp_path / "m", HALF)
    rs = half_second_readings()
    want = outputs(*per_message(tmp_path / "m", rs))
    e, alerts = engine_for(tmp_path / "m")
    for i in range(0, len(rs), fetch):
        ticks = Ticks(e, max((r.ts_ns for r in rs[:i]), default=0))
        for r in rs[i:i + fetch]:
            ticks.add([r], 2**62)
        ticks.flush()
    got = outputs(e, alerts)
    for sid in want[0]:
        assert np.array_equal(want[0][sid], got[0][sid]), sid
    assert want[1] == got[1] and want[1]  # a spike fired (and resolved) in both


def test_a_devices_quantities_sent_one_by_one_stay_in_one_tick(tmp_path: Path) -> None:
    """Devices publishing each quantity as its own message, all with the step's time (what the
    scale benchmark's device order does): one tick per step, not per message, and the output of
    one tick per message."""
    write_model(tmp_path / "m", SPEC_ONE)
    rs = [Reading(StreamKey(f"d{d}", q), T0 + i * C, 20.0 + np.sin(i / 5 + d) + (0.5 if q == "b" else 0.0))
          for i in range(30) for d in range(20) for q in ("a", "b", "c", "d")]
    want = outputs(*per_message(tmp_path / "m", rs))
    e, alerts = engine_for(tmp_path / "m")
    flushes = 0

    class Counting(Ticks):
        def flush(self) -> None:
            nonlocal flushes
            flushes += bool(self.group)
            super().flush()

    ticks = Counting(e, 0)
    for r in rs:
        ticks.add([r], 2**62)
    ticks.flush()
    got = outputs(e, alerts)
    assert len(got[0]) == 80
    for sid in want[0]:
        assert np.array_equal(want[0][sid], got[0][sid]), sid
    # One per step: the message whose time crosses into a new second ends a tick (so a step's
    # first reading closes the tick of the one before), plus the last.
    assert flushes == 31


def test_pack_unpack_keeps_files_and_meta(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "m_1.state.npz").write_bytes(b"xyz")
    blob = pack(tmp_path / "a", {"clock_ns": 5})
    assert unpack(blob, tmp_path / "b") == {"clock_ns": 5}
    assert (tmp_path / "b" / "m_1.state.npz").read_bytes() == b"xyz"


def test_checkpoint_with_open_buckets_then_replay_equals_one_engine(
    tmp_path: Path, fresh_nats: Callable[..., NatsCluster]
) -> None:
    cluster = fresh_nats(nodes=1, mqtt=False)
    models = tmp_path / "m"
    write_model(models, SPEC)
    settings = Settings(models={"dir": models, "watch": False},
                        nats={"url": cluster.url, "partitions": 1, "stream": "PW", "checkpoint_interval_s": 0.2})
    names = names_for(settings)
    link = NatsLink(settings.nats, "test")
    link.start()
    rs = readings()
    cut = len(rs) // 2 + 1  # mid-step: some devices' temp came, their rpm not yet
    metrics = Metrics()
    registry = ModelRegistry(models, 1, metrics)
    alerts: list[Alert] = []
    workers: list[PartitionWorker] = []
    try:
        link.run(provision.ensure_all(link.js, settings.nats, names), 60)

        async def stores() -> tuple[CheckpointStore, CheckpointStore]:
            kv = await link.js.key_value(names.ckpt)
            obj = await link.js.object_store(names.state)
            return CheckpointStore(kv, obj, "one"), CheckpointStore(kv, obj, "two")

        first_store, second_store = link.run(stores())

        def send(part: list[Reading]) -> int:
            async def go() -> int:
                seq = 0
                for r in part:
                    body = orjson.dumps({"ts": r.ts_ns, "value": r.value})
                    seq = (await link.js.publish(f"p.0.sensors.{r.stream.device}.{r.stream.quantity}", body)).seq
                return seq
            return link.run(go(), 60)

        def worker(store: CheckpointStore, epoch: int) -> PartitionWorker:
            w = PartitionWorker(link, settings, 0, Lease(0, epoch, epoch), store, registry, None, metrics=metrics,
                                names=names, on_alert=alerts.append)
            w.engine.publish_forecasts = True
            workers.append(w)
            w.start()
            return w

        last1 = send(rs[:cut])
        one = worker(first_store, 1)
        wait_until(lambda: one.saved_seq == last1, timeout=30, what="a checkpoint after the first part")
        assert one.engine.unfed()  # open buckets that the checkpoint cannot hold
        one.stop()  # as if its lease were lost: no final checkpoint
        saved = link.run(second_store.claim(0, 2))
        assert saved is not None and saved.seq < last1  # the successor replays the open buckets' messages
        two = worker(second_store, 3)
        last2 = send(rs[cut:])
        wait_until(lambda: two.applied == last2, timeout=30, what="the successor at the end")
        time.sleep(0.2)
        want, got = outputs(*per_message(models, rs)), outputs(two.engine, alerts)
        assert sorted(want[0]) == sorted(got[0])
        for sid in want[0]:
            assert np.abs(want[0][sid] - got[0][sid]).max() <= 1e-4, sid
        assert want[1] == got[1]  # the same alerts (the replay's copies share their ids)
        assert one.fenced is False
        with pytest.raises(Fenced):  # the first owner, were it still running, could not save any more
            link.run(first_store.save(0, 1, last2, b""))
    finally:
        for w in workers:
            w.stop()
        link.close()
