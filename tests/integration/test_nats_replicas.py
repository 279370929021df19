"""Inference replicas on a real 3-node NATS cluster, each a real ``sensorcast serve`` process
(roles inference,api): partitions spread over the replicas, every stream served by exactly one,
forecasts and alerts equal to one engine fed the same readings in-process, and a replica killed
with SIGKILL mid-stream hands its partitions over (lease expiry, checkpoint, replay) with the same
forecasts and no alert lost or doubled in the alerts stream.
"""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from service.config import NatsSettings, Settings
from service.metrics import Metrics
from service.nats.link import NatsLink
from service.records import Alert, Reading, StreamKey
from service.runtime.registry import ModelRegistry
from service.streams.engine import Engine
from tests.integration.serving import ServeProcess
from tests.waiting import wait_until
from tools.localservers import NatsCluster
from tools.modelkit import KitSpec, write_model

pytestmark = pytest.mark.integration

C = 60 * 10**9  # kit cadence (60 s) in ns
T0 = 1_700_000_000 // 60 * C
N = 120  # steps per device
DEVICES = [f"dev{i}" for i in range(8)]
SPIKES = {("dev2", 70), ("dev5", 95), ("dev6", 40)}  # (device, step): one firing and one resolved each
SPEC = KitSpec(name="m", mean=(20.0,), std=(3.0,), warmup_steps=10)
PARTITIONS = 4
LEASE_TTL_S = 6.0  # the default
CHECKPOINT_S = 8.0  # long enough that the second part is taken before the next checkpoint


def readings() -> list[Reading]:
    """Step-major: every device's reading of step i before any of step i+1 (what devices on one
    clock send). Odd devices are 7 s into their bucket, so those buckets close on a later reading."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(N):
        for d, dev in enumerate(DEVICES):
            v = float(np.sin(i / 8.0 + d) * 3 + 20 + rng.normal(0, 0.1)) + (30.0 if (dev, i) in SPIKES else 0.0)
            out.append(Reading(StreamKey(dev, "value"), T0 + i * C + (7 * 10**9 if d % 2 else 0), v))
    return out


def reference(models: Path, rs: list[Reading]) -> tuple[Engine, list[Alert]]:
    """One engine, the same code, fed every reading in one tick (wall clock: a backlog)."""
    settings = Settings(models={"dir": models, "watch": False})
    alerts: list[Alert] = []
    m = Metrics()
    engine = Engine(settings, ModelRegistry(models, 1, m), None, m, on_alert=alerts.append)
    engine.accept(rs)
    engine.tick()
    return engine, alerts


def last_step(r: Reading) -> int:
    return -(-r.ts_ns // C) * C


class Feed:
    """Publishes readings as a device's MQTT message would arrive: subject sensors.<dev>.value,
    which the servers' mapping puts on the device's partition p.<n>.sensors.<dev>.value."""

    def __init__(self, cluster: NatsCluster, stream: str) -> None:
        self.settings = NatsSettings(url=cluster.url, stream=stream, partitions=PARTITIONS, replicas=3)
        self.link = NatsLink(self.settings, "test-feed")
        self.link.start()

    def send(self, rs: list[Reading]) -> None:
        async def go() -> None:
            for r in rs:
                body = orjson.dumps({"ts": r.ts_ns, "value": r.value})
                await self.link.js.publish(f"sensors.{r.stream.device}.value", body, stream=self.settings.stream)

        self.link.run(go(), 120)

    def owners(self) -> dict[int, str]:
        async def read() -> dict[int, str]:
            kv = await self.link.js.key_value(f"{self.settings.stream}_leases")
            out = {}
            for p in range(PARTITIONS):
                with contextlib.suppress(Exception):
                    out[p] = (await kv.get(f"p{p}")).value.decode()
            return out

        return self.link.run(read(), 30)

    def checkpoints(self) -> dict[int, tuple[int, int]]:
        """Partition -> (readings-stream sequence of its checkpoint, record revision)."""
        async def read() -> dict[int, tuple[int, int]]:
            kv = await self.link.js.key_value(f"{self.settings.stream}_ckpt")
            out = {}
            for p in range(PARTITIONS):
                try:
                    e = await kv.get(f"p{p}")
                except Exception:
                    continue
                out[p] = (int(orjson.loads(e.value or b"{}").get("seq", 0)), e.revision or 0)
            return out

        return self.link.run(read(), 30)

    def alerts(self) -> list[tuple[str, dict[str, Any]]]:
        """Every message in the alerts stream: (Nats-Msg-Id, payload)."""
        async def read() -> list[tuple[str, dict[str, Any]]]:
            name = f"{self.settings.stream}_ALERTS"
            info = await self.link.js.stream_info(name)
            n = info.state.messages
            if not n:
                return []
            cfg = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, mem_storage=True)
            sub = await self.link.js.pull_subscribe(info.config.subjects[0], stream=name, config=cfg)
            got: list[Any] = []
            while len(got) < n:
                got += await sub.fetch(n - len(got), timeout=5)
            await sub.unsubscribe()
            return [((m.headers or {}).get("Nats-Msg-Id", ""), orjson.loads(m.data)) for m in got]

        return self.link.run(read(), 60)

    def close(self) -> None:
        """Delete this test's streams and buckets: the next test's stream captures p.> too."""
        async def drop() -> None:
            s = self.settings.stream
            for name in (s, f"{s}_ALERTS", *(f"KV_{s}_{b}" for b in ("leases", "ckpt", "alert_state")),
                         f"OBJ_{s}_state"):
                with contextlib.suppress(Exception):
                    await self.link.js.delete_stream(name)

        try:
            self.link.run(drop(), 60)
        finally:
            self.link.close()


def replica(tmp_path: Path, cluster: NatsCluster, stream: str, models: Path, name: str) -> ServeProcess:
    return ServeProcess(
        tmp_path / name, "mqtt://127.0.0.1:9", f"sqlite:///{tmp_path / name / 'readings.db'}", models,
        extra_env={
            "SENSORCAST_ROLES": "inference,api",
            "SENSORCAST_NATS__URL": cluster.url,
            "SENSORCAST_NATS__STREAM": stream,
            "SENSORCAST_NATS__PARTITIONS": str(PARTITIONS),
            "SENSORCAST_NATS__REPLICAS": "3",
            "SENSORCAST_NATS__REPLICA_ID": name,
            "SENSORCAST_NATS__CHECKPOINT_INTERVAL_S": str(CHECKPOINT_S),
            "SENSORCAST_NATS__LEASE_TTL_S": str(LEASE_TTL_S),
        },
    )


def served(svc: ServeProcess) -> dict[str, int | None]:
    """Stream id -> its last step (ns) on one replica (every page)."""
    out: dict[str, int | None] = {}
    cursor = ""
    while True:
        r = svc.get("/v1/streams", params={"limit": 1000, "cursor": cursor})
        r.raise_for_status()
        for s in r.json():
            t = s["last_time"]
            out[s["id"]] = None if t is None else round(_ts(t) * 1e9)
        cursor = r.headers.get("X-Next-Cursor", "")
        if not cursor:
            return out


def gauged(svc: ServeProcess) -> int:
    """The streams a replica's /metrics counts (sensorcast_streams over every status)."""
    total = 0.0
    for line in svc.get("/metrics").text.splitlines():
        if line.startswith("sensorcast_streams{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def assert_same_forecasts(svc: ServeProcess, ids: list[str], engine: Engine) -> None:
    for sid in ids:
        fc = svc.get(f"/v1/streams/{sid}/forecast").json()
        ref = engine.forecast(sid)
        assert ref is not None
        assert np.abs(np.array(fc["mean"], np.float64) - np.array(ref.mean)).max() <= 1e-4, sid
        assert np.abs(np.array(fc["scale"], np.float64) - np.array(ref.scale)).max() <= 1e-4, sid


def assert_alerts_once(feed: Feed, ref_alerts: list[Alert]) -> None:
    got = feed.alerts()
    ids = [i for i, _ in got]
    assert len(ids) == len(set(ids)), Counter(ids).most_common(3)  # nothing doubled
    events = sorted((p["stream_id"], p["state"], p["ts_ns"]) for _, p in got)
    want = sorted((a.stream_id, a.state, a.ts_ns) for a in ref_alerts)
    assert events == want  # nothing lost either
    assert {s for s, _, _ in want} == {f"{d}/value" for d, _ in SPIKES}


@pytest.fixture
def models(tmp_path: Path) -> Path:
    write_model(tmp_path / "models", SPEC)
    return tmp_path / "models"


@pytest.fixture
def stream() -> str:
    return f"R{uuid.uuid4().hex[:8].upper()}"


@pytest.fixture
def feed(nats_cluster: NatsCluster, stream: str) -> Iterator[Feed]:
    f = Feed(nats_cluster, stream)
    yield f
    f.close()


def test_every_stream_is_served_by_one_replica_with_single_process_forecasts(
    tmp_path: Path, nats_cluster: NatsCluster, stream: str, models: Path, feed: Feed
) -> None:
    reps = [replica(tmp_path, nats_cluster, stream, models, f"r{i}") for i in range(3)]
    try:
        for svc in reps:
            svc.start(timeout=90)
        wait_until(lambda: len(feed.owners()) == PARTITIONS and len(set(feed.owners().values())) == 3,
                   timeout=30, what="the partitions spread over the three replicas")
        rs = readings()
        feed.send(rs)
        engine, ref_alerts = reference(models, rs)
        want = {s.id: s.last_ts_ns for s in engine.streams()}
        assert len(want) == len(DEVICES)

        def together() -> dict[str, int | None]:
            seen: dict[str, int | None] = {}
            for svc in reps:
                seen.update(served(svc))
            return seen

        wait_until(lambda: together() == want, timeout=60, what="every stream at its last step")
        lists = [set(served(svc)) for svc in reps]
        for sid in want:
            assert sum(sid in ids for ids in lists) == 1, (sid, lists)  # exactly one replica serves it
        assert sum(1 for ids in lists if ids) >= 2  # and the work is spread
        for svc, ids in zip(reps, lists, strict=True):
            assert_same_forecasts(svc, sorted(ids), engine)
        # sensorcast_streams{status} of a replica counts all its partitions' streams
        wait_until(lambda: [gauged(svc) for svc in reps] == [len(ids) for ids in lists], timeout=10,
                   what="each replica's sensorcast_streams")
        wait_until(lambda: len(feed.alerts()) >= len(ref_alerts), timeout=20, what="the alerts in the alerts stream")
        assert_alerts_once(feed, ref_alerts)

        # A clean stop (SIGTERM): final checkpoints, leases released: the others take over at
        # their next heartbeat, not after the TTL, and carry on from the final state.
        leaving = next(svc for svc, ids in zip(reps, lists, strict=True) if ids)
        stayed = [svc for svc in reps if svc is not leaving]
        assert leaving.kill(signal.SIGTERM) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean stop
        stopped = time.monotonic()
        wait_until(lambda: set(feed.owners().values()) <= {s.env()["SENSORCAST_NATS__REPLICA_ID"] for s in stayed}
                   and len(feed.owners()) == PARTITIONS, timeout=LEASE_TTL_S * 2, what="the partitions handed over")

        def rest() -> dict[str, int | None]:
            seen: dict[str, int | None] = {}
            for svc in stayed:
                seen.update(served(svc))
            return seen

        wait_until(lambda: rest() == want, timeout=30, what="every stream on the remaining replicas")
        print(f"clean hand-over (SIGTERM to every stream served again): {time.monotonic() - stopped:.2f} s")
        for svc in stayed:
            assert_same_forecasts(svc, sorted(served(svc)), engine)
        assert_alerts_once(feed, ref_alerts)
    finally:
        for svc in reps:
            svc.kill(signal.SIGTERM)


def test_sigkill_moves_partitions_with_the_same_forecasts_and_alerts_once(
    tmp_path: Path, nats_cluster: NatsCluster, stream: str, models: Path, feed: Feed
) -> None:
    a, b = (replica(tmp_path, nats_cluster, stream, models, name) for name in ("ra", "rb"))
    try:
        a.start(timeout=90)
        b.start(timeout=90)
        wait_until(lambda: len(feed.owners()) == PARTITIONS and len(set(feed.owners().values())) == 2,
                   timeout=30, what="the partitions shared by both replicas")
        rs = readings()
        engine, ref_alerts = reference(models, rs)
        want = {s.id: s.last_ts_ns for s in engine.streams()}
        # The first part, checkpointed; then a second part (two spikes in it) that the victim takes
        # and is killed before it checkpoints again: its successor restores the first part's state
        # and replays the second, firing those alerts again (the alerts stream drops the copies).
        cut1, cut2 = 50 * len(DEVICES), 100 * len(DEVICES)
        feed.send(rs[:cut1])
        step1 = {f"{r.stream.device}/value": last_step(r) for r in rs[:cut1 - len(DEVICES) * 2]}
        wait_until(lambda: all((served(a) | served(b)).get(s, 0) >= t for s, t in step1.items()),
                   timeout=60, what="the first part stepped")
        victim, survivor = (a, b) if "dev2/value" in served(a) else (b, a)
        victim_id = victim.env()["SENSORCAST_NATS__REPLICA_ID"]
        mine = [p for p, owner in feed.owners().items() if owner == victim_id]
        # Sequences are the readings' places in rs + 1 (the stream holds nothing else); a
        # checkpoint stops before the oldest reading still in an open bucket (the odd devices'
        # last), so one of the whole first part is at most two steps short of its end.
        wait_until(lambda: all(feed.checkpoints().get(p, (0, 0))[0] >= cut1 - 2 * len(DEVICES) for p in mine),
                   timeout=2 * CHECKPOINT_S + 20, every=0.02, what="a checkpoint of the first part")
        feed.send(rs[cut1:cut2])
        moved = sorted(served(victim))
        step2 = {f"{r.stream.device}/value": last_step(r) for r in rs[cut1:cut2 - len(DEVICES) * 2]}
        wait_until(lambda: all(served(victim).get(s, 0) >= t for s, t in step2.items() if s in moved),
                   timeout=60, every=0.02, what="the victim's streams at the second part")
        victim.kill(signal.SIGKILL)
        killed = time.monotonic()
        saved = feed.checkpoints()
        # The stream holds these readings only, numbered from 1: nothing of the second part is saved.
        assert all(saved[p][0] <= cut1 for p in mine), (saved, cut1)
        feed.send(rs[cut2:])
        first: dict[str, float] = {}

        def taken_over() -> bool:
            seen = served(survivor)
            for sid in moved:
                if seen.get(sid) is not None and sid not in first:
                    first[sid] = time.monotonic() - killed
            return all(seen.get(sid) == want[sid] for sid in want)

        wait_until(taken_over, timeout=LEASE_TTL_S * 3 + 30, every=0.05, what="the survivor serving every stream")
        failover = max(first.values())
        print(f"failover (kill -9 to the first forecast of every moved stream on the survivor): {failover:.2f} s "
              f"for {len(moved)} streams")
        assert set(feed.owners().values()) == {survivor.env()["SENSORCAST_NATS__REPLICA_ID"]}
        # Within the lease, a heartbeat and the restore (a loaded 2-core box: generous slack).
        assert failover < LEASE_TTL_S + LEASE_TTL_S / 3 + 10
        assert_same_forecasts(survivor, sorted(want), engine)
        wait_until(lambda: len(feed.alerts()) >= len(ref_alerts), timeout=20, what="the alerts in the alerts stream")
        assert_alerts_once(feed, ref_alerts)
    finally:
        a.kill(signal.SIGTERM)
        b.kill(signal.SIGTERM)


def test_a_replica_carries_on_through_the_loss_of_the_streams_leader_node(
    tmp_path: Path, fresh_nats: Any, models: Path
) -> None:
    """In-process replica (the same code serve runs), a fresh 3-node cluster, kill -9 of the node
    leading the readings stream mid-stream: the replica's leases lapse during the election (it
    stops its partitions on its own clock), it takes them back, restores its checkpoints,
    re-creates its consumers and ends with the single engine's forecasts."""
    from service.nats import provision
    from service.nats.outputs import NatsAlertPublisher, names_for
    from service.nats.replica import build_replica

    cluster = fresh_nats(nodes=3, partitions=PARTITIONS, mqtt=False)
    settings = Settings(models={"dir": models, "watch": False},
                        nats={"url": cluster.url, "partitions": PARTITIONS, "stream": "NODEKILL", "replicas": 3,
                              "checkpoint_interval_s": 2.0, "replica_id": "solo"})
    feed = Feed(cluster, "NODEKILL")
    out = NatsAlertPublisher(settings.nats, settings.alerts, names=names_for(settings))
    rep = build_replica(settings, Metrics(), out.publish_alert, lambda f: None, None, out)
    rs = readings()
    engine, _ = reference(models, rs)
    want = {s.id: s.last_ts_ns for s in engine.streams()}
    try:
        out.start()
        rep.start()
        half = len(rs) // 2

        def send(part: list[Reading]) -> None:
            async def go() -> None:
                for r in part:
                    body = orjson.dumps({"ts": r.ts_ns, "value": r.value})

                    async def once(r: Reading = r, body: bytes = body) -> Any:
                        return await feed.link.js.publish(f"sensors.{r.stream.device}.value", body, stream="NODEKILL")

                    await provision.retrying("publish", once, 90)

            feed.link.run(go(), 300)

        send(rs[:half])
        wait_until(lambda: len(rep.streams()) == len(DEVICES), timeout=60, what="the first half")
        time.sleep(3)  # a checkpoint
        leader = feed.link.run(feed.link.js.stream_info("NODEKILL")).cluster.leader
        cluster.kill(next(i for i, n in enumerate(cluster.nodes) if n.workdir.name == leader))
        send(rs[half:])

        def done() -> bool:
            return {s.id: s.last_ts_ns for s in rep.streams()} == want

        try:
            wait_until(done, timeout=120, every=0.2, what="the replica caught up after the node loss")
        except AssertionError:
            print("DIAG", {s.id: s.last_ts_ns for s in rep.streams()}, want,
                  {p: (w.applied, w.alive(), w.active) for p, w in rep.partitions().items()},
                  feed.link.run(feed.link.js.stream_info("NODEKILL")).state)
            raise
        for sid in want:
            got, ref = rep.forecast(sid), engine.forecast(sid)
            assert got is not None and ref is not None
            assert np.abs(np.array(got.mean) - np.array(ref.mean)).max() <= 1e-4, sid
    finally:
        rep.stop()
        out.stop()
        feed.link.close()
