"""Every Store implementation obeys the same contract (memory, SQLite, InfluxDB 1.x).

Including: ``read_range(..., limit=n)`` gives the newest ``n`` of the range, oldest first,
with the limit inside the query (SQL/InfluxQL ``LIMIT``); a point the store refuses for
good raises ``StoreRejected`` and bisection isolates exactly that point.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import StoreSettings
from service.errors import ConfigError, StoreRejected
from service.records import Reading, StreamKey
from service.store import open_store
from service.store.base import Store
from service.store.influx1 import InfluxQLStore
from service.store.memory import MemoryStore
from service.store.rejections import isolate
from service.store.sqlite import SqliteStore
from tools.localservers import Influxd

_db = itertools.count()

A = StreamKey("pump 1", "temp")
B = StreamKey("pump 1", "temp", (("site", "north"),))  # same device/quantity, extra tag
C = StreamKey('we,ird="dev\\x', "q=1 ,x", (("t k", "v'al\\ue"),))


@pytest.fixture(params=["memory", "sqlite", pytest.param("influx1", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/s.db"
    else:
        influxd: Influxd = request.getfixturevalue("influxd")
        url = f"influxdb://127.0.0.1:{influxd.port}/contract{next(_db)}"
    s = open_store(StoreSettings(url=url))  # type: ignore[call-arg]
    yield s
    s.close()


def test_write_and_read_back_exactly(store: Store) -> None:
    pts = [Reading(A, 1_700_000_000_000_000_000 + i * 1_000_000_001, i / 7) for i in range(50)]
    store.write(pts)
    assert store.read_range(A, 0, 2**62) == pts
    assert store.read_last(A, 5) == pts[-5:]
    assert store.read_range(A, pts[10].ts_ns, pts[20].ts_ns) == pts[10:20]


def test_streams_with_and_without_tags_are_distinct(store: Store) -> None:
    store.write([Reading(A, 10**18, 1.0), Reading(B, 10**18, 2.0), Reading(C, 10**18 + 1, 3.0)])
    assert store.read_last(A, 10) == [Reading(A, 10**18, 1.0)]
    assert store.read_last(B, 10) == [Reading(B, 10**18, 2.0)]
    assert store.read_last(C, 10) == [Reading(C, 10**18 + 1, 3.0)]
    assert sorted(store.streams()) == sorted([A, B, C])


def test_same_stream_and_timestamp_overwrites(store: Store) -> None:
    store.write([Reading(A, 10**18, 1.0)])
    store.write([Reading(A, 10**18, 2.0), Reading(A, 10**18, 3.0)])
    assert store.read_range(A, 0, 2**62) == [Reading(A, 10**18, 3.0)]


def test_read_last_many_in_bulk(store: Store) -> None:
    streams = [StreamKey(f"d{i}", "q") for i in range(250)]
    store.write([Reading(s, 10**18 + t, float(t)) for s in streams for t in range(4)])
    got = store.read_last_many([*streams, StreamKey("missing", "q")], 3)
    assert set(got) == set(streams)
    assert all([r.value for r in got[s]] == [1.0, 2.0, 3.0] for s in streams)


def test_empty_reads(store: Store) -> None:
    assert store.read_last(A, 3) == []
    assert store.read_range(A, 0, 2**62) == []
    assert store.read_last_many([A], 3) == {}
    assert store.ping()


def test_read_range_limit_keeps_the_newest_and_is_pushed_into_the_query(store: Store) -> None:
    t0 = 1_700_000_000_000_000_000
    pts = [Reading(A, t0 + i * 1_000_000_007, float(i)) for i in range(30)]
    newer_sibling = [Reading(B, t0 + 10**12 + i, -float(i)) for i in range(30)]  # B matches A's tag filter
    store.write(pts + newer_sibling)
    queries: list[str] = []
    if isinstance(store, InfluxQLStore):
        real = store.query
        store.query = lambda q: (queries.append(q), real(q))[1]  # type: ignore[method-assign]
    elif isinstance(store, SqliteStore):
        store._db.set_trace_callback(queries.append)
    assert store.read_range(A, 0, 2**62, limit=5) == pts[-5:]
    assert store.read_range(A, pts[3].ts_ns, pts[10].ts_ns, limit=4) == pts[6:10]
    assert store.read_range(A, 0, 2**62, limit=1000) == pts
    assert store.read_range(A, 0, 2**62, limit=0) == []
    assert store.read_range(B, 0, 2**62, limit=2) == newer_sibling[-2:]
    assert store.read_range(A, 0, 2**62) == pts  # no limit: everything, as before
    if not isinstance(store, MemoryStore):
        limited = [q for q in queries if "LIMIT" in q]
        assert len(limited) >= 4, queries  # the store, not Python, cuts the rows


def poison(store: Store) -> Reading:
    """A point this store refuses for good, whatever else is in the batch."""
    if isinstance(store, MemoryStore):
        store.reject = lambda r: "points beyond retention policy" if r.value == 666.0 else None
        return Reading(A, 10**18 + 5, 666.0)
    if isinstance(store, SqliteStore):
        return Reading(A, 10**18 + 5, float("nan"))  # NOT NULL: SQLite stores NaN as NULL
    return Reading(StreamKey("d", "q", (("t", "x" * 70_000),)), 10**18 + 5, 1.0)  # series key > 64 KiB


def test_a_refused_point_raises_store_rejected_and_is_isolated(store: Store) -> None:
    good = [Reading(A, 10**18 + i, float(i)) for i in range(10)]
    bad = poison(store)
    batch = [*good[:5], bad, *good[5:]]
    with pytest.raises(StoreRejected) as e:
        store.write(batch)
    got = isolate(store.write, batch, e.value)
    assert [r.reading for r in got] == [bad]
    assert [r for r in store.read_range(A, 0, 2**62) if r.value == r.value] == good


def test_unknown_url_scheme() -> None:
    # Refused when the settings are built, and by open_store for settings made without validation.
    with pytest.raises(ValidationError, match="expected influxdb://"):
        StoreSettings(url="postgres://x/y")  # type: ignore[call-arg]
    with pytest.raises(ConfigError):
        open_store(StoreSettings.model_construct(url="postgres://x/y"))
