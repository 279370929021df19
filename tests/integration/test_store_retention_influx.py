"""store.retention_days / downsample_after_days against the real influxd 1.6.7: the database's
retention policies after start, old writes refused, hourly means read back for old ranges."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from service.config import StoreSettings
from service.errors import StoreRejected
from service.records import Reading, StreamKey
from service.store import open_store
from service.store.influx1 import HOURLY_RP, Influx1Store
from service.store.influx2 import Influx2Store
from service.store.retention import Retention, policies
from tools.localservers import Influxd

pytestmark = pytest.mark.integration

HOUR_NS = 3_600_000_000_000
DAY_NS = 24 * HOUR_NS
A = StreamKey("press", "temp")
B = StreamKey("press", "temp", (("line", "2"),))  # a tagged sibling: its means stay its own


def _open(influxd: Influxd, db: str, **kw: float) -> Influx1Store:
    store = open_store(StoreSettings(url=f"influxdb://127.0.0.1:{influxd.port}/{db}", **kw))  # type: ignore[arg-type]
    assert isinstance(store, Influx1Store)
    return store


def test_retention_policy_set_at_start_and_enforced(influxd: Influxd) -> None:
    store = _open(influxd, "ret_policy", retention_days=90)
    Retention(store, StoreSettings(retention_days=90)).run_once()
    assert policies(store) == {"autogen": ("2160h0m0s", True)}  # the default policy, altered: data kept
    with pytest.raises(StoreRejected, match="retention"):  # the server refuses what it would delete
        store.write([Reading(A, time.time_ns() - 100 * DAY_NS, 1.0)])
    store.write([Reading(A, time.time_ns() - 80 * DAY_NS, 1.0)])
    # A changed setting alters it at the next start.
    Retention(store, StoreSettings(retention_days=7.5)).run_once()
    assert policies(store)["autogen"] == ("180h0m0s", True)
    store.close()


def test_downsampled_hourly_means_read_back_for_old_ranges(influxd: Influxd) -> None:
    now = time.time_ns()
    start = now - now % HOUR_NS - 40 * DAY_NS
    store = _open(influxd, "ret_down", retention_days=365, downsample_after_days=30)
    minutes = [Reading(A, start + i * 60 * 10**9, float(i)) for i in range(180)]  # 3 h at 1/min
    sibling = [Reading(B, start + i * 60 * 10**9, 7.0) for i in range(60)]
    recent = [Reading(A, now - HOUR_NS + i * 10**9, 5.0) for i in range(3)]
    store.write(minutes + sibling + recent)  # before start: the raw policy still keeps 40-day-old points
    Retention(store, StoreSettings(retention_days=365, downsample_after_days=30)).run_once()
    assert policies(store) == {"autogen": ("720h0m0s", True), HOURLY_RP: ("8760h0m0s", False)}
    hourly = [Reading(A, start + h * HOUR_NS, 60 * h + 29.5) for h in range(3)]  # mean of 60h..60h+59
    assert store.read_range(A, 0, now) == hourly + recent
    assert store.read_range(B, 0, now) == [Reading(B, start, 7.0)]
    assert store.read_range(A, 0, now, limit=4) == hourly[2:] + recent
    assert store.read_range(A, start + HOUR_NS, start + 2 * HOUR_NS) == [hourly[1]]
    assert store.read_last(A, 3) == recent  # warm-up reads raw readings only
    # Without downsampling configured, the same range reads the raw policy (still holding them).
    raw = _open(influxd, "ret_down")
    assert raw.read_range(A, start, start + HOUR_NS) == minutes[:60]
    # A restart averages everything again, then each pass the last complete hours: rerunning
    # overwrites, never doubles.
    again = Retention(store, StoreSettings(retention_days=365, downsample_after_days=30))
    again.run_once()
    again.run_once()
    assert store.read_range(A, 0, now) == hourly + recent
    store.close()
    raw.close()


def test_influxdb2_retention_refused_is_a_warning(influxd: Influxd, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A server that refuses the bucket update (here a 1.x server without /api/v2/buckets; a
    token without write access to buckets answers 403 the same way) logs and goes on."""
    store = Influx2Store(f"http://127.0.0.1:{influxd.port}", "bucket", "org", "token", "readings", 5.0)
    caplog.set_level(logging.INFO, "service.store.retention")
    Retention(store, StoreSettings(retention_days=30, downsample_after_days=7)).run_once()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("could not set the retention of bucket bucket" in w for w in warnings), warnings
    assert any("downsample_after_days: not done on InfluxDB 2.x" in w for w in warnings), warnings
    store.close()
