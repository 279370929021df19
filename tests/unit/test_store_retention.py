"""store.retention_days and store.downsample_after_days on the SQLite store (service/store/retention.py)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import StoreSettings
from service.records import Reading, StreamKey
from service.store.retention import Retention
from service.store.sqlite import HOUR_NS, SqliteStore

DAY_NS = 24 * HOUR_NS
NOW = 1_800_000_000 * 10**9 - (1_800_000_000 * 10**9) % HOUR_NS  # an hour boundary, so hours are whole
A, B = StreamKey("press", "temp"), StreamKey("old", "temp", (("site", "x"),))


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "s.db")


def settings(**kw: float) -> StoreSettings:
    return StoreSettings(url="sqlite:///x.db", **kw)  # type: ignore[arg-type]


def test_old_points_pruned_recent_kept_in_small_batches(store: SqliteStore) -> None:
    old = [Reading(A, NOW - 100 * DAY_NS + i * 10**9, float(i)) for i in range(50)]
    recent = [Reading(A, NOW - DAY_NS + i * 10**9, float(i)) for i in range(5)]
    only_old = [Reading(B, NOW - 95 * DAY_NS, 1.0)]
    store.write(old + recent + only_old)
    rep = Retention(store, settings(retention_days=90), batch_rows=7).run_once(NOW)
    assert rep.pruned == 51
    assert store.read_range(A, 0, NOW) == recent
    assert store.read_range(B, 0, NOW) == []
    assert store.streams() == [A]  # a stream without points is forgotten...
    store.write([Reading(B, NOW, 2.0)])
    assert store.streams() == sorted([A, B])  # ...and comes back with its next reading
    assert Retention(store, settings(retention_days=90), batch_rows=7).run_once(NOW).pruned == 0


def test_pruned_pages_are_reused(tmp_path: Path) -> None:
    """No VACUUM: the file stops growing once pruning frees what ingest writes."""
    store = SqliteStore(tmp_path / "s.db")
    day = [Reading(A, NOW - 200 * DAY_NS + i * 10**9, float(i)) for i in range(20_000)]
    store.write(day)
    Retention(store, settings(retention_days=90)).run_once(NOW)
    db = sqlite3.connect(tmp_path / "s.db")
    pages, free = db.execute("PRAGMA page_count").fetchone()[0], db.execute("PRAGMA freelist_count").fetchone()[0]
    assert free > pages // 2  # the deleted rows' pages are free...
    store.write([Reading(A, r.ts_ns + 150 * DAY_NS, r.value) for r in day])
    assert db.execute("PRAGMA page_count").fetchone()[0] <= pages + 5  # ...and hold the new rows
    db.close()
    store.close()


def test_downsampled_to_hourly_means_that_reads_return(store: SqliteStore) -> None:
    start = NOW - 40 * DAY_NS
    minutes = [Reading(A, start + i * 60 * 10**9, float(i)) for i in range(180)]  # 3 h at 1/min
    recent = [Reading(A, NOW - HOUR_NS + i * 10**9, 5.0) for i in range(3)]
    store.write(minutes + recent)
    rep = Retention(store, settings(retention_days=365, downsample_after_days=30), batch_rows=50).run_once(NOW)
    assert rep.folded == 180 and rep.pruned == 0
    hourly = [Reading(A, start + h * HOUR_NS, 60 * h + 29.5) for h in range(3)]  # mean of 60h..60h+59
    assert store.read_range(A, 0, NOW) == hourly + recent
    assert store.read_range(A, 0, NOW, limit=4) == hourly[2:] + recent
    assert store.read_range(A, start + HOUR_NS, start + 2 * HOUR_NS) == [hourly[1]]
    assert store.read_last(A, 10) == recent  # warm-up wants readings at cadence, not means
    # A late reading for a downsampled hour: merged by count, not averaged with the mean.
    store.write([Reading(A, start + 5 * 10**9, 1000.0)])
    assert store.read_range(A, start, start + 1)[0].value == 29.5  # the hour's mean wins on its timestamp
    Retention(store, settings(downsample_after_days=30)).run_once(NOW)
    assert store.read_range(A, start, start + 1)[0].value == pytest.approx((29.5 * 60 + 1000.0) / 61)
    # Retention then removes the means with the readings.
    assert Retention(store, settings(retention_days=39)).run_once(NOW).pruned == 3
    assert store.read_range(A, 0, NOW) == recent


def test_downsampling_before_1970_floors_to_the_hour(store: SqliteStore) -> None:
    store.write([Reading(A, -HOUR_NS + 10, 1.0), Reading(A, -HOUR_NS + 20, 3.0)])
    Retention(store, settings(downsample_after_days=1)).run_once(NOW)
    assert store.read_range(A, -2 * HOUR_NS, 0) == [Reading(A, -HOUR_NS, 2.0)]


def test_addon_thread_prunes_on_start_and_stops(store: SqliteStore, caplog: pytest.LogCaptureFixture) -> None:
    now = time.time_ns()
    store.write([Reading(A, now - 10 * DAY_NS, 1.0), Reading(A, now, 2.0)])
    addon = Retention(store, settings(retention_days=2, prune_interval_s=3600))
    caplog.set_level("INFO", "service.store.retention")
    addon.start()
    try:
        deadline = time.monotonic() + 10
        while len(store.read_range(A, 0, now + 1)) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.read_range(A, 0, now + 1) == [Reading(A, now, 2.0)]
        assert addon.alive()
    finally:
        addon.stop()
    assert not addon.alive()
    assert "pruned 1 points before" in caplog.text


def test_downsampling_must_come_before_retention() -> None:
    with pytest.raises(ValidationError, match=r"less than store\.retention_days"):
        settings(retention_days=30, downsample_after_days=30)
    with pytest.raises(ValidationError):
        settings(retention_days=0.01)  # under an hour: InfluxDB's shortest policy


def test_store_that_cannot_be_reached_is_a_warning_and_the_thread_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    from service.store.influx1 import Influx1Store
    from tools.localservers import free_port

    store = Influx1Store(f"http://127.0.0.1:{free_port()}", "db", "readings", 1.0)  # nothing listens there
    addon = Retention(store, settings(retention_days=30))
    caplog.set_level("WARNING", "service.store.retention")
    addon.start()
    try:
        deadline = time.monotonic() + 10
        while "store retention pass failed" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "store retention pass failed (next in 3600 s): influxdb query failed" in caplog.text
        assert addon.alive()
    finally:
        addon.stop()
        store.close()
