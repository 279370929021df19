"""Partition leases and fenced checkpoints on real nats-servers (3-node clusters).

Several ``Leases`` share one bucket as replicas would; the tests drive their heartbeats by
hand (every ttl/3, as the Replica does), so a replica can be stalled on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from nats.js.api import KeyValueConfig, ObjectStoreConfig
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from service.config import NatsSettings
from service.nats import provision
from service.nats.ckptstore import CheckpointStore, Fenced
from service.nats.leases import Changes, Leases, targets
from service.nats.link import NatsLink
from tools.localservers import NatsCluster

T = TypeVar("T")
TTL = 2.0
P = 8


class Bench:
    """A link, the provisioned buckets of one test's own stream, and helpers to run on the loop."""

    def __init__(self, cluster: NatsCluster, stream: str, ttl: float = TTL) -> None:
        self.settings = NatsSettings(url=cluster.url, replicas=3, stream=stream, partitions=P, lease_ttl_s=ttl)
        self.link = NatsLink(self.settings, "test")
        self.link.start()
        self.ttl = ttl
        self.names = provision.Names.of(self.settings)
        # The buckets as provision.ensure_all makes them, without the readings stream: on the
        # shared cluster another test's stream holds its subjects already.
        try:
            self.kv: KeyValue = self.run(self.buckets(), 90)
        except BaseException:
            self.link.close()
            raise

    async def buckets(self) -> KeyValue:
        js, n = self.link.js, self.names
        kv = await provision.retrying("leases", lambda: js.create_key_value(KeyValueConfig(
            bucket=n.leases, history=1, ttl=self.settings.lease_ttl_s, replicas=3)))
        await provision.retrying("ckpt", lambda: js.create_key_value(KeyValueConfig(bucket=n.ckpt, history=1, replicas=3)))
        await provision.retrying("state", lambda: js.create_object_store(n.state, ObjectStoreConfig(bucket=n.state,
                                                                                                  replicas=3)))
        return kv

    def run(self, coro: Awaitable[T], timeout: float = 60) -> T:
        return self.link.run(coro, timeout)  # type: ignore[arg-type]

    def leases(self, name: str) -> Leases:
        return Leases(self.kv, name, P, self.ttl)

    def store(self, name: str) -> CheckpointStore:
        async def make() -> CheckpointStore:
            js = self.link.js  # the lookups ask for the stream's info: retried through an election
            kv = await provision.retrying("ckpt", lambda: js.key_value(self.names.ckpt))
            objects = await provision.retrying("state", lambda: js.object_store(self.names.state))
            return CheckpointStore(kv, objects, replica=name, timeout_s=30)
        return self.run(make())

    def beat(self, replicas: list[Leases], times: int = 1) -> list[list[Changes]]:
        """``times`` rounds of every replica's heartbeat, ttl/3 apart; checks nobody holds what
        another holds after each round."""
        async def rounds() -> list[list[Changes]]:
            out = []
            for _ in range(times):
                out.append(list(await asyncio.gather(*(r.heartbeat() for r in replicas))))
                assert_disjoint(replicas)
                await asyncio.sleep(self.ttl / 3)
            return out
        return self.run(rounds(), times * (self.ttl + 10))

    def owners(self) -> dict[int, str]:
        """What the bucket says: partition -> owner."""
        async def read() -> dict[int, str]:
            got: dict[int, str] = {}
            for p in range(P):
                with contextlib.suppress(KeyNotFoundError):
                    entry = await provision.retrying("get", lambda p=p: self.kv.get(f"p{p}"))  # type: ignore[misc]
                    got[p] = (entry.value or b"").decode()
            return got
        return self.run(read())

    def close(self) -> None:
        self.link.close()


def assert_disjoint(replicas: list[Leases]) -> None:
    seen: dict[int, str] = {}
    for r in replicas:
        for p in r.held:
            assert p not in seen, f"p{p} held by {seen[p]} and {r.replica}"
            seen[p] = r.replica


def until(bench: Bench, replicas: list[Leases], done: Callable[[], bool], beats: int = 30) -> int:
    """Heartbeats until ``done()``; returns how many it took (fails after ``beats``)."""
    for i in range(1, beats + 1):
        bench.beat(replicas)
        if done():
            return i
    pytest.fail(f"not settled after {beats} heartbeats: {[sorted(r.held) for r in replicas]}")


def balanced(replicas: list[Leases]) -> bool:
    held = [len(r.held) for r in replicas]
    want = targets(P, {r.me for r in replicas})
    return sum(held) == P and all(len(r.held) == want[r.me] for r in replicas)


@pytest.fixture
def bench(nats_cluster: NatsCluster, request: pytest.FixtureRequest) -> Iterator[Bench]:
    b = Bench(nats_cluster, "L" + request.node.name.replace("test_", "")[:20].upper())
    yield b
    b.close()


def test_shares_balance_as_replicas_join_and_each_partition_has_one_owner(bench: Bench) -> None:
    a, b = bench.leases("a"), bench.leases("b")
    until(bench, [a, b], lambda: balanced([a, b]))
    assert {len(a.held), len(b.held)} == {P // 2}
    assert bench.owners() == {p: r.me for r in (a, b) for p in r.held}
    before = {p: r.replica for r in (a, b) for p in r.held}
    c = bench.leases("c")
    beats = until(bench, [a, b, c], lambda: balanced([a, b, c]))
    assert beats <= 6, beats
    assert sorted(len(r.held) for r in (a, b, c)) == [2, 3, 3]
    assert bench.owners() == {p: r.me for r in (a, b, c) for p in r.held}
    # Only what the newcomer needed moved.
    moved = [p for r in (a, b) for p in r.held if before[p] != r.replica]
    assert moved == [] and len(c.held) == 2
    # And it stays that way: no partition goes back and forth.
    held = {r.replica: dict(r.held) for r in (a, b, c)}
    changes = bench.beat([a, b, c], 4)
    assert all(not ch.gained and not ch.lost for rnd in changes for ch in rnd)
    assert {r.replica: set(r.held) for r in (a, b, c)} == {k: set(v) for k, v in held.items()}
    # Renewals keep the epoch and move the revision on.
    for r in (a, b, c):
        for p, lease in r.held.items():
            assert lease.epoch == held[r.replica][p].epoch and lease.revision > held[r.replica][p].revision


def test_a_stalled_replica_loses_its_partitions_and_knows_it(bench: Bench) -> None:
    a, b, c = bench.leases("a"), bench.leases("b"), bench.leases("c")
    until(bench, [a, b, c], lambda: balanced([a, b, c]))
    stalled = dict(c.held)
    assert all(c.valid(p, lease.epoch) for p, lease in stalled.items())
    assert not any(c.valid(p, lease.epoch + 1) for p, lease in stalled.items())  # another ownership
    assert all(c.deadline(p) > time.monotonic() for p in stalled) and c.deadline(P + 1) == 0.0
    store_c = bench.store("c")
    for p, lease in stalled.items():
        assert bench.run(store_c.claim(p, lease.epoch)) is None
        bench.run(store_c.save(p, lease.epoch, 5, f"state of p{p} by c".encode()))
    # c's heartbeats stop (stuck, or cut off): after the TTL the others hold everything ...
    trusted_until = {p: c.deadline(p) for p in stalled}

    def taken_over() -> bool:
        # Never while c could still trust its lease: the server frees it only after the TTL.
        now = time.monotonic()
        assert all(now > trusted_until[p] for r in (a, b) for p in r.held if p in stalled)
        return len(a.held) + len(b.held) == P
    until(bench, [a, b], taken_over, beats=20)
    assert sorted(len(r.held) for r in (a, b)) == [4, 4]
    # ... and c, without a word from the server, knows its own are not to be trusted, and
    # reports them lost.
    assert not any(c.valid(p) for p in stalled) and all(r.valid(p) for r in (a, b) for p in r.held)
    assert sorted(c.check()) == sorted(stalled) and c.held == {}
    # The new owners' claims fence c's checkpoints off; they restore what c saved.
    for p in stalled:
        owner = a if p in a.held else b
        store = bench.store(owner.replica)
        ckpt = bench.run(store.claim(p, owner.held[p].epoch))
        assert ckpt is not None and ckpt.seq == 5 and ckpt.blob == f"state of p{p} by c".encode()
        assert owner.held[p].epoch > stalled[p].epoch
        with pytest.raises(Fenced):
            bench.run(store_c.save(p, stalled[p].epoch, 9, b"stale"))
        bench.run(store.save(p, owner.held[p].epoch, 9, b"new"))
    # c comes back: it joins again and gets its share back over the next heartbeats.
    until(bench, [a, b, c], lambda: balanced([a, b, c]))


def test_release_all_hands_partitions_over_at_once(bench: Bench) -> None:
    a, b = bench.leases("a"), bench.leases("b")
    until(bench, [a, b], lambda: balanced([a, b]))
    leaving = set(b.held)
    bench.run(b.release_all())
    assert b.held == {}
    (changes,) = bench.beat([a])[0]
    assert set(changes.gained) == leaving and len(a.held) == P  # one heartbeat, no TTL wait


def test_checkpoint_round_trip_and_superseded_objects_deleted(bench: Bench) -> None:
    first, second = bench.store("r1"), bench.store("r2")
    assert bench.run(first.claim(3, 10)) is None
    blob = bytes(range(256)) * 1200  # several object chunks
    bench.run(first.save(3, 10, 100, blob))
    bench.run(first.save(3, 10, 150, blob[::-1]))
    bench.run(first.save(3, 10, 200, blob))
    ckpt = bench.run(second.claim(3, 11))
    assert ckpt is not None and (ckpt.partition, ckpt.seq, ckpt.epoch, ckpt.blob) == (3, 200, 10, blob)
    bench.run(second.save(3, 11, 250, b"next"))

    async def objects() -> set[str]:
        store = await bench.link.js.object_store(bench.names.state)
        return {o.name for o in await store.list(ignore_deletes=True) if o.name}
    assert bench.run(objects()) == {"p3.11.a"}  # the previous owner's two slots are gone
    # An older epoch cannot claim over a newer one.
    with pytest.raises(Fenced):
        bench.run(bench.store("r3").claim(3, 10))
    ckpt = bench.run(bench.store("r4").claim(3, 12))
    assert ckpt is not None and (ckpt.seq, ckpt.blob) == (250, b"next")


def test_a_stale_owner_is_fenced_after_a_new_claim(bench: Bench) -> None:
    old, new = bench.store("old"), bench.store("new")
    bench.run(old.claim(0, 5))
    bench.run(old.save(0, 5, 1, b"one"))
    assert bench.run(new.claim(0, 6)).blob == b"one"  # type: ignore[union-attr]
    with pytest.raises(Fenced):
        bench.run(old.save(0, 5, 2, b"two"))
    with pytest.raises(Fenced):  # and it stays fenced: no claim under that epoch any more
        bench.run(old.save(0, 5, 3, b"three"))
    bench.run(new.save(0, 6, 2, b"two by new"))
    assert bench.run(bench.store("x").claim(0, 7)).blob == b"two by new"  # type: ignore[union-attr]


def test_corrupt_record_is_reported_and_claimed_over(bench: Bench) -> None:
    async def spoil() -> None:
        kv = await bench.link.js.key_value(bench.names.ckpt)
        await kv.put("p1", b"not json")
    bench.run(spoil())
    store = bench.store("s")
    assert bench.run(store.claim(1, 3)) is None
    bench.run(store.save(1, 3, 7, b"ok"))
    assert bench.run(bench.store("t").claim(1, 4)).blob == b"ok"  # type: ignore[union-attr]


def test_heartbeats_continue_through_a_node_loss(fresh_nats: Any) -> None:
    cluster = fresh_nats(nodes=3, partitions=P, mqtt=False)
    bench = Bench(cluster, "LKILL", ttl=3.0)
    try:
        a, b = bench.leases("a"), bench.leases("b")
        until(bench, [a, b], lambda: balanced([a, b]))
        store = bench.store("a")
        p, lease = next(iter(a.held.items()))
        bench.run(store.claim(p, lease.epoch))
        bench.run(store.save(p, lease.epoch, 42, b"before the election"))
        # Kill the leases bucket's leader: an election (longer than this TTL: leases may expire
        # meanwhile), and a cluster that fails to create consumers for a while afterwards.
        info = bench.run(bench.link.js.stream_info(f"KV_{bench.names.leases}"))
        before = info.state.last_seq
        cluster.kill(int(info.cluster.leader.removeprefix("n")) - 1)  # type: ignore[union-attr]
        # Heartbeats go on through it (never sharing a partition: beat() checks) and end balanced,
        # every lease renewed by the new leader.
        until(bench, [a, b], lambda: balanced([a, b]) and all(
            lease.revision > before for r in (a, b) for lease in r.held.values()), beats=60)
        assert bench.owners() == {q: r.me for r in (a, b) for q in r.held}
        owner = a if p in a.held else b
        if owner.held[p].epoch == lease.epoch:  # kept it through the election
            bench.run(store.save(p, lease.epoch, 43, b"after the election"))
        else:  # it moved (or came back under a new epoch): the claim restores from the survivors
            ckpt = bench.run(bench.store(owner.replica).claim(p, owner.held[p].epoch))
            assert ckpt is not None and (ckpt.seq, ckpt.blob) == (42, b"before the election")
            with pytest.raises(Fenced):
                bench.run(store.save(p, lease.epoch, 43, b"stale"))
    finally:
        bench.close()
