"""Every Store implementation obeys the same contract (memory, SQLite, InfluxDB 1.x)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import StoreSettings
from service.errors import ConfigError
from service.localservers import Influxd
from service.records import Reading, StreamKey
from service.store import open_store
from service.store.base import Store

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


def test_unknown_url_scheme() -> None:
    with pytest.raises(ConfigError):
        open_store(StoreSettings(url="postgres://x/y"))  # type: ignore[call-arg]
