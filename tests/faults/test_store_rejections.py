"""A point the real influxd refuses for good never blocks ingestion (issue #12, finding 2).

The refused point sits inside a batch of good ones: a series key over influxd's 64 KiB limit
(240 tags full of commas, the shape from the issue, built as a Reading directly since the
decoder refuses it) or a point a week old under a 1 h retention policy. Through the real
BatchWriter against a real influxd 1.6.7, live and through spool replay (influxd SIGKILLed
while the batch was spooled, then restarted): the rest of that batch and every later batch
are stored exactly, the refused point is in the dead-letter file with influxd's reason, the
spool ends empty and ``sensorcast_store_rejected_total`` is 1. A body over influxd's
``max-body-size`` (413) is split until it fits, and nothing is dead-lettered.
"""

from __future__ import annotations

import itertools
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import orjson
import pytest

from service.config import StoreSettings
from service.ingest.writer import BatchWriter, Item
from service.metrics import Metrics
from service.records import Reading, StreamKey
from service.store import open_store
from service.store.influx1 import Influx1Store
from service.store.spool import Spool
from tests.waiting import wait_until
from tools.localservers import INFLUXD, INFLUXD_CONF, Influxd, free_port

pytestmark = pytest.mark.integration

_db = itertools.count()
GOOD = [StreamKey(f"pump-{i}", "temp") for i in range(3)]
# 240 tags whose values are full of commas: escaped, the series key is ~110 KB (> 65,535).
HUGE = StreamKey("huge", "temp", tuple((f"t{i:03d}", "v," * 150) for i in range(240)))
BATCH = 301  # good points in the batch holding the refused one
POS = 137  # where the refused point sits in it


class CountingStore(Influx1Store):
    """The real 1.x store; counts write requests to show what the bisection cost."""

    requests = 0

    def write(self, readings: Sequence[Reading]) -> None:
        self.requests += 1
        super().write(readings)


def open_real(influxd: Influxd, db: str, retention: bool) -> CountingStore:
    plain = open_store(StoreSettings(url=f"influxdb://127.0.0.1:{influxd.port}/{db}"))  # creates the database
    plain.close()
    store = CountingStore(f"http://127.0.0.1:{influxd.port}", db, "readings", 5.0)
    if retention:
        store.query(f'CREATE RETENTION POLICY "short" ON "{db}" DURATION 1h REPLICATION 1 DEFAULT')
    return store


def good_points(n: int, start_ns: int) -> list[Reading]:
    return [Reading(GOOD[i % 3], start_ns + i * 1_000_003, i * 0.5 - 7.25) for i in range(n)]


def refused_point(kind: str, now: int) -> Reading:
    if kind == "series_key_too_long":
        return Reading(HUGE, now, 1.0)
    return Reading(GOOD[0], now - 7 * 86_400 * 10**9, 2.0)  # a week old, retention 1 h


@pytest.fixture
def writer_for(tmp_path: Path) -> Iterator[Callable[[Influx1Store], tuple[BatchWriter, list[object]]]]:
    made: list[BatchWriter] = []

    def make(store: Influx1Store) -> tuple[BatchWriter, list[object]]:
        acks: list[object] = []
        w = BatchWriter(store, Spool(tmp_path / "spool", 10**8), Metrics(), batch_size=1000,
                        batch_interval_s=0.02, queue_max=1000, acker=acks.extend)
        w.start()
        made.append(w)
        return w, acks

    yield make
    for w in made:
        w.stop()


def stored(store: Influx1Store) -> list[Reading]:
    return sorted((r for s in GOOD for r in store.read_range(s, 0, 2**62)), key=lambda r: (r.stream, r.ts_ns))


def check_outcome(w: BatchWriter, store: Influx1Store, expected: list[Reading], bad: Reading, kind: str) -> None:
    assert stored(store) == sorted(expected, key=lambda r: (r.stream, r.ts_ns))  # exact: none lost, none doubled
    lines = [orjson.loads(x) for x in w.dead_letter.path.read_bytes().splitlines()]
    assert len(lines) == 1, lines
    [dead] = lines
    assert dead["reason"] == kind and dead["status"] == 400
    needle = "max key length exceeded" if kind == "series_key_too_long" else "points beyond retention policy"
    assert needle in dead["detail"], dead["detail"]  # influxd's own words
    assert dead["reading"]["ts_ns"] == bad.ts_ns and dead["reading"]["device"] == bad.stream.device
    assert dict(bad.stream.tags) == dead["reading"]["tags"]
    assert w.spool.readings == 0 and not list(w.spool.dir.glob("*.spool")) and not list(w.spool.dir.glob("*.bad"))
    total = sum(s.value for m in w.metrics.store_rejected.collect() for s in m.samples if s.name.endswith("_total"))
    assert total == 1 and w.metrics.store_rejected.labels(kind)._value.get() == 1


@pytest.mark.parametrize("kind", ["series_key_too_long", "retention"])
def test_refused_point_in_a_live_batch(influxd: Influxd, writer_for: Callable[..., tuple[BatchWriter, list[object]]],
                                       kind: str) -> None:
    store = open_real(influxd, f"rejlive{next(_db)}", retention=kind == "retention")
    try:
        w, acks = writer_for(store)
        now = time.time_ns() - 60 * 10**9
        batch, bad = good_points(BATCH, now), refused_point(kind, now + 10**9)
        w.put(Item([*batch[:POS], bad, *batch[POS:]], (1, 1, 1)))
        wait_until(lambda: len(acks) == 1, timeout=30, what="the batch with the refused point acknowledged")
        bisect_requests = store.requests
        later = [good_points(200, now + (k + 2) * 10**9) for k in range(5)]
        for k, more in enumerate(later):
            w.put(Item(more, (2 + k, 1, 1)))
        wait_until(lambda: len(acks) == 6, timeout=30, what="later batches acknowledged")
        check_outcome(w, store, batch + [r for more in later for r in more], bad, kind)
        assert w.metrics.store_errors._value.get() == 0  # a refusal is not an outage
        assert w.state.store_ok
        # 1 refused request + 2 per level of the bisection of 302 points.
        assert bisect_requests <= 1 + 2 * math.ceil(math.log2(BATCH + 1)), bisect_requests
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["series_key_too_long", "retention"])
def test_refused_point_in_a_spooled_batch(fresh_influxd: Callable[..., Influxd],
                                          writer_for: Callable[..., tuple[BatchWriter, list[object]]],
                                          kind: str) -> None:
    influxd = fresh_influxd(db=None)
    store = open_real(influxd, "rejspool", retention=kind == "retention")
    try:
        w, acks = writer_for(store)
        influxd.kill()  # SIGKILL: the store is down while the batch arrives
        now = time.time_ns() - 60 * 10**9
        batch, bad = good_points(BATCH, now), refused_point(kind, now + 10**9)
        w.put(Item([*batch[:POS], bad, *batch[POS:]], (1, 1, 1)))
        later = [good_points(200, now + (k + 2) * 10**9) for k in range(3)]
        for k, more in enumerate(later):
            w.put(Item(more, (2 + k, 1, 1)))
        wait_until(lambda: len(acks) == 4, timeout=30, what="batches spooled and acknowledged")
        assert w.spool.readings == BATCH + 1 + 600 and not w.state.store_ok
        influxd.start()  # same data directory: the database and its retention policy are back
        wait_until(lambda: w.spool.readings == 0, timeout=60, what="spool replayed past the refused point")
        after = good_points(100, now + 10 * 10**9)
        w.put(Item(after, (9, 1, 1)))
        wait_until(lambda: len(acks) == 5, timeout=30, what="a batch after the replay acknowledged")
        check_outcome(w, store, batch + [r for more in later for r in more] + after, bad, kind)
        assert w.state.store_ok
    finally:
        store.close()


def test_a_body_over_the_limit_is_split_until_it_fits(
    writer_for: Callable[..., tuple[BatchWriter, list[object]]],
) -> None:
    if not shutil.which("influxd") and not Path(INFLUXD).exists():
        pytest.skip("influxd not installed (make setup installs it)")
    workdir = Path(tempfile.mkdtemp(prefix="sc-influx-413-"))
    port, rpc = free_port(), free_port()
    conf = INFLUXD_CONF.format(port=port, rpc=rpc, dir=workdir).replace("max-body-size = 0", "max-body-size = 100000")
    assert "max-body-size = 100000" in conf
    (workdir / "influxd.conf").write_text(conf)
    influxd = Influxd(argv=[INFLUXD, "-config", str(workdir / "influxd.conf")], port=port, workdir=workdir)
    influxd.start()
    store = open_real(influxd, "small", retention=False)
    try:
        w, acks = writer_for(store)
        batch = good_points(3000, time.time_ns() - 60 * 10**9)  # ~190 KB of line protocol: 413 whole
        w.put(Item(batch, (1, 1, 1)))
        wait_until(lambda: len(acks) == 1, timeout=30, what="the oversized batch acknowledged")
        assert stored(store) == sorted(batch, key=lambda r: (r.stream, r.ts_ns))
        assert not w.dead_letter.path.exists() and w.spool.readings == 0
        assert 3 <= store.requests <= 7  # refused once, then halves and quarters
    finally:
        store.close()
        influxd.stop()
