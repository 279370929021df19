"""The durable spool and the writer's batching, spooling and acknowledgement rules."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service.errors import SpoolFullError, StoreError
from service.ingest.writer import BatchWriter, Item
from service.metrics import Metrics
from service.records import Reading, StreamKey
from service.store.memory import MemoryStore
from service.store.spool import Spool
from tests.waiting import wait_until

S = StreamKey("dev", "q", (("k", "v,=\\ x"),))


def rs(start: int, n: int) -> list[Reading]:
    return [Reading(S, start + i, float(i) / 3) for i in range(n)]


def wait_for(cond: Callable[[], object], timeout: float = 5.0) -> None:
    wait_until(cond, timeout=timeout, every=0.01)


# --- spool -----------------------------------------------------------------------------
def test_spool_round_trip_in_order_and_survives_reopen(tmp_path: Path) -> None:
    sp = Spool(tmp_path, 10_000_000)
    sp.append(rs(0, 3))
    sp.append(rs(100, 2))
    assert (len(sp), sp.readings) == (2, 5)
    with pytest.raises(StoreError, match="in use"):
        Spool(tmp_path, 10_000_000).acquire()  # a second writer is refused
    sp.close()
    sp2 = Spool(tmp_path, 10_000_000)  # a restart
    head = sp2.oldest()
    assert head is not None and head[1] == rs(0, 3)
    sp2.remove(head[0])
    head = sp2.oldest()
    assert head is not None and head[1] == rs(100, 2)
    sp2.remove(head[0])
    assert sp2.oldest() is None and sp2.bytes == 0


def test_spool_full_refuses_and_recovers(tmp_path: Path) -> None:
    sp = Spool(tmp_path, 600)
    sp.append(rs(0, 5))
    with pytest.raises(SpoolFullError):
        sp.append(rs(0, 50))
    assert sp.full and sp.readings == 5
    head = sp.oldest()
    assert head is not None
    sp.remove(head[0])
    assert not sp.full
    sp.append(rs(0, 5))


def test_spool_drops_partial_writes_and_sets_aside_corrupt_files(tmp_path: Path) -> None:
    (tmp_path / "0000000000000007-3.tmp").write_bytes(b"[[half")
    (tmp_path / "0000000000000001-1.spool").write_bytes(b"not json")
    sp = Spool(tmp_path, 10_000_000)
    sp.append(rs(0, 1))
    assert not list(tmp_path.glob("*.tmp"))
    head = sp.oldest()
    assert head is not None and head[1] == rs(0, 1)
    assert list(tmp_path.glob("*.bad"))


# --- writer ----------------------------------------------------------------------------
def make_writer(tmp_path: Path, store: MemoryStore, acks: list[object], sinks: list[list[Reading]],
                spool_max: int = 10_000_000, batch: int = 100) -> BatchWriter:
    w = BatchWriter(
        store, Spool(tmp_path / "spool", spool_max), Metrics(), batch_size=batch, batch_interval_s=0.02,
        queue_max=1000, sinks=[sinks.append], acker=acks.extend,
    )
    w.start()
    return w


def test_writer_batches_acks_after_write_and_feeds_sinks(tmp_path: Path) -> None:
    store, acks, sinks = MemoryStore(), [], []  # type: ignore[var-annotated]
    w = make_writer(tmp_path, store, acks, sinks)
    for i in range(250):
        w.put(Item(rs(i * 10, 1), (i + 1, 1, 1)))
    wait_for(lambda: len(acks) == 250)
    w.stop()
    assert store.count() == 250
    assert 3 <= store.writes <= 250
    assert sorted(t[0] for t in acks) == list(range(1, 251))  # type: ignore[index]
    assert sum(len(b) for b in sinks) == 250


def test_store_down_spools_then_replays_without_loss(tmp_path: Path) -> None:
    store, acks, sinks = MemoryStore(), [], []  # type: ignore[var-annotated]
    store.fail = True
    w = make_writer(tmp_path, store, acks, sinks)
    for i in range(50):
        w.put(Item(rs(i * 10, 2), (i + 1, 1, 1)))
    wait_for(lambda: len(acks) == 50)  # acknowledged because spooled (durable)
    assert store.count() == 0 and w.spool.readings == 100
    store.fail = False
    wait_for(lambda: store.count() == 100)
    wait_for(lambda: w.spool.readings == 0)
    w.stop()
    assert w.metrics.spool_depth._value.get() == 0


def test_spool_full_stops_acknowledging_until_store_returns(tmp_path: Path) -> None:
    store, acks, sinks = MemoryStore(), [], []  # type: ignore[var-annotated]
    store.fail = True
    w = make_writer(tmp_path, store, acks, sinks, spool_max=2000, batch=10)
    for i in range(40):
        w.put(Item(rs(i * 100, 10), (i + 1, 1, 1)))
    wait_for(lambda: w.spool.full)
    time.sleep(0.3)
    acked = len(acks)
    assert acked < 40
    assert w.metrics.spool_full._value.get() == 1
    # Everything acknowledged is durable somewhere.
    assert w.spool.readings >= acked * 10 - 10 * 5  # batches may merge several items
    store.fail = False
    wait_for(lambda: len(acks) == 40)
    wait_for(lambda: store.count() == 400)
    w.stop()
    assert w.metrics.spool_full._value.get() == 0


def test_writer_restart_replays_spool_from_previous_run(tmp_path: Path) -> None:
    first = Spool(tmp_path / "spool", 10_000_000)
    first.append(rs(0, 7))
    first.close()
    store, acks, sinks = MemoryStore(), [], []  # type: ignore[var-annotated]
    w = make_writer(tmp_path, store, acks, sinks)
    wait_for(lambda: store.count() == 7)
    w.stop()


def test_sink_failure_does_not_stop_the_writer(tmp_path: Path) -> None:
    store, acks = MemoryStore(), []  # type: ignore[var-annotated]

    def bad_sink(_: list[Reading]) -> None:
        raise RuntimeError("boom")

    w = BatchWriter(store, Spool(tmp_path, 10**7), Metrics(), 10, 0.01, 100, sinks=[bad_sink], acker=acks.extend)
    w.start()
    w.put(Item(rs(0, 3), (1, 1, 1)))
    w.put(Item(rs(10, 3), (2, 1, 1)))
    wait_for(lambda: len(acks) == 2)
    w.stop()
    assert store.count() == 6


def test_backpressure_blocks_put_when_queue_full(tmp_path: Path) -> None:
    store = MemoryStore()
    w = BatchWriter(store, Spool(tmp_path, 10**7), Metrics(), 10, 0.01, queue_max=2)
    # Writer not started: the queue fills and put() times out instead of growing.
    assert w.put(Item(rs(0, 1)), 0.1)
    assert w.put(Item(rs(1, 1)), 0.1)
    assert not w.put(Item(rs(2, 1)), 0.3)
    done = threading.Event()
    w.start()
    assert w.put(Item(rs(3, 1), done=done), 2.0)
    assert done.wait(2.0)
    w.stop()


def test_long_replay_does_not_block_new_intake(tmp_path: Path) -> None:
    class SlowStore(MemoryStore):
        def write(self, readings: list[Reading]) -> None:  # type: ignore[override]
            time.sleep(0.1)
            super().write(readings)

    sp = Spool(tmp_path / "spool", 10**8)
    for i in range(40):  # ~4 s of replay at 0.1 s per batch
        sp.append(rs(i * 100, 5))
    sp.close()
    store, acks, sinks = SlowStore(), [], []  # type: ignore[var-annotated]
    w = make_writer(tmp_path, store, acks, sinks)
    time.sleep(0.2)
    w.put(Item(rs(10**6, 1), (1, 1, 1)))
    wait_for(lambda: len(acks) == 1, timeout=3.0)  # spooled and acknowledged mid-replay
    assert w.spool.readings > 0
    wait_for(lambda: store.count() == 201, timeout=20)
    w.stop()
