"""The durable spool and the writer's batching, spooling and acknowledgement rules."""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from service.errors import SpoolFullError, SpoolReadError, StoreAuthError, StoreError
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


# --- permanent refusals, spool read errors, the writer's catch-all ------------------------
RETENTION = "partial write: points beyond retention policy"


def dead_letters(w: BatchWriter) -> list[dict[str, object]]:
    path = w.dead_letter.path
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def rejected_total(w: BatchWriter) -> float:
    return sum(s.value for m in w.metrics.store_rejected.collect() for s in m.samples if s.name.endswith("_total"))


@pytest.mark.parametrize("partial", [False, True], ids=["all-or-nothing", "partial-writes"])
def test_a_refused_point_in_a_live_batch_is_dead_lettered_and_the_rest_stored(tmp_path: Path, partial: bool) -> None:
    store, acks, sinks = MemoryStore(), [], []  # type: ignore[var-annotated]
    bad = Reading(S, 10**6 + 3, 9.0)
    store.reject = lambda r: RETENTION if r == bad else None
    store.partial_writes = partial
    w = make_writer(tmp_path, store, acks, sinks, batch=1000)
    batch = [*rs(10**6, 3), bad, *rs(10**6 + 4, 96)]
    w.put(Item(batch, (1, 1, 1)))
    wait_for(lambda: len(acks) == 1)
    for i in range(5):  # later batches are not held up
        w.put(Item(rs(2 * 10**6 + i * 100, 100), (2 + i, 1, 1)))
    wait_for(lambda: len(acks) == 6)
    w.stop()
    assert store.count() == 99 + 500 and store.read_range(S, bad.ts_ns, bad.ts_ns + 1) == []
    [line] = dead_letters(w)
    assert line["reason"] == "retention" and line["status"] == 400 and RETENTION in str(line["detail"])
    assert line["reading"] == {"device": "dev", "quantity": "q", "tags": {"k": "v,=\\ x"}, "ts_ns": bad.ts_ns,
                               "value": 9.0}
    assert rejected_total(w) == 1 and w.metrics.store_rejected.labels("retention")._value.get() == 1
    assert w.spool.readings == 0 and w.state.store_ok
    assert w.metrics.readings_stored._value.get() == 599


def test_a_refused_point_in_a_spooled_batch_does_not_block_replay(tmp_path: Path) -> None:
    store, acks, sinks = MemoryStore(), [], []  # type: ignore[var-annotated]
    bad = Reading(S, 55, 1.0)
    store.reject = lambda r: RETENTION if r == bad else None
    store.fail = True
    w = make_writer(tmp_path, store, acks, sinks)
    w.put(Item([*rs(0, 50), bad, *rs(56, 40)], (1, 1, 1)))
    for i in range(20):
        w.put(Item(rs(1000 + i * 10, 5), (2 + i, 1, 1)))
    wait_for(lambda: len(acks) == 21)  # spooled, so acknowledged
    assert w.spool.readings == 191 and store.count() == 0
    store.fail = False
    wait_for(lambda: w.spool.readings == 0)
    w.stop()
    assert store.count() == 190
    assert [d["reading"]["ts_ns"] for d in dead_letters(w)] == [55]  # type: ignore[index]
    assert rejected_total(w) == 1
    assert not list((tmp_path / "spool").glob("*.spool")) and not list((tmp_path / "spool").glob("*.bad"))


def test_a_transient_error_mid_bisection_dead_letters_nothing_twice(tmp_path: Path) -> None:
    class FlakyStore(MemoryStore):
        """Refuses one point for good and, once, drops the connection mid-bisection."""

        flaked = False

        def write(self, readings: list[Reading]) -> None:  # type: ignore[override]
            if self.attempts == 2 and not self.flaked:
                self.flaked = True
                self.attempts += 1
                raise StoreError("connection reset by peer")
            super().write(readings)

    store, acks, sinks = FlakyStore(), [], []  # type: ignore[var-annotated]
    store.reject = lambda r: RETENTION if r.ts_ns == 7 else None
    w = make_writer(tmp_path, store, acks, sinks)
    w.put(Item(rs(0, 30), (1, 1, 1)))
    wait_for(lambda: len(acks) == 1)
    wait_for(lambda: w.spool.readings == 0 and store.count() == 29)
    w.stop()
    assert store.flaked and len(dead_letters(w)) == 1 and rejected_total(w) == 1


def test_refused_credentials_are_transient_and_loud(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, acks, sinks = MemoryStore(), [], []  # type: ignore[var-annotated]
    store.fail = StoreAuthError("influxdb write: 401 (credentials refused): authorization failed")
    with caplog.at_level(logging.ERROR):
        w = make_writer(tmp_path, store, acks, sinks)
        w.put(Item(rs(0, 10), (1, 1, 1)))
        wait_for(lambda: len(acks) == 1)  # spooled: nothing lost while an operator fixes the password
        assert w.spool.readings == 10 and not dead_letters(w)
        assert "refused our credentials" in caplog.text
        store.fail = False
        wait_for(lambda: store.count() == 10)
        w.stop()
    assert rejected_total(w) == 0


def test_spool_read_errors_are_retried_and_only_corruption_is_set_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sp = Spool(tmp_path, 10**7)
    sp.append(rs(0, 3))
    sp.append(rs(10, 2))
    real = Path.read_bytes
    failing: list[int] = [errno.EIO, errno.EMFILE, errno.EACCES]

    def read_bytes(p: Path) -> bytes:
        if p.suffix == ".spool" and failing:
            raise OSError(failing.pop(0), "injected")
        return real(p)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    for _ in range(3):
        with pytest.raises(SpoolReadError):
            sp.oldest()
        assert len(sp) == 2 and not list(tmp_path.glob("*.bad"))  # kept, not given up
    head = sp.oldest()
    assert head is not None and head[1] == rs(0, 3)
    sp.remove(head[0])
    # Corruption is set aside: wrong JSON shape, wrong types, a count that disagrees with the name.
    for name, body in [("0000000000000100-1.spool", b'{"not": "a batch"}'),
                       ("0000000000000101-1.spool", b'[[1, "q", [], 5, 1.0]]'),
                       ("0000000000000102-2.spool", b'[["d", "q", [], 5, 1.0]]'),
                       ("0000000000000103-1.spool", b'[["d", "q", [], "5", 1.0]]')]:
        (tmp_path / name).write_bytes(body)
    sp.close()
    sp2 = Spool(tmp_path, 10**7)
    head = sp2.oldest()
    assert head is not None and head[1] == rs(10, 2)
    sp2.remove(head[0])
    assert sp2.oldest() is None and len(list(tmp_path.glob("*.bad"))) == 4


def test_writer_keeps_a_batch_it_cannot_read_and_replays_it_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Spool(tmp_path / "spool", 10**7)
    first.append(rs(0, 7))
    first.close()
    real = Path.read_bytes
    broken = threading.Event()
    broken.set()

    def read_bytes(p: Path) -> bytes:
        if p.suffix == ".spool" and broken.is_set():
            raise OSError(errno.EIO, "Input/output error")
        return real(p)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    store, acks, sinks = MemoryStore(), [], []  # type: ignore[var-annotated]
    w = make_writer(tmp_path, store, acks, sinks)
    w.put(Item(rs(100, 2), (1, 1, 1)))
    wait_for(lambda: len(acks) == 1)  # joins the spool behind the unreadable batch, acknowledged
    time.sleep(0.5)  # several retries while the disk fails
    assert store.count() == 0 and w.spool.readings == 9
    broken.clear()
    wait_for(lambda: store.count() == 9)
    w.stop()
    assert not list((tmp_path / "spool").glob("*.bad"))


def test_an_unexpected_error_in_a_flush_is_counted_and_the_writer_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, acks, sinks = MemoryStore(), [], []  # type: ignore[var-annotated]
    w = BatchWriter(store, Spool(tmp_path / "spool", 10**7), Metrics(), 100, 0.02, 1000, sinks=[sinks.append],
                    acker=acks.extend)
    assert not w.is_alive()
    real = w._make_durable
    calls = [0]

    def buggy(readings: list[Reading]) -> bool:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("a bug")
        return real(readings)

    w._make_durable = buggy  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        w.start()
        http = Item(rs(0, 2), done=threading.Event())
        w.put(http)
        assert http.done is not None and http.done.wait(5) and not http.ok  # told it failed
        assert "a bug" in caplog.text and "Traceback" in caplog.text
    w.put(Item(rs(10, 2), (2, 1, 1)))
    wait_for(lambda: len(acks) == 1)
    assert w.is_alive() and w.metrics.writer_errors._value.get() == 1
    assert [t[0] for t in acks] == [2] and store.count() == 2
    w.stop()
    assert not w.is_alive()
