"""Fleet clock ordering, ground-truth log, replay CSV parsing: pure logic, no broker."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tools.sim.live import FleetClock, TruthLog
from tools.sim.mqttout import encode_ts, reading_payload
from tools.sim.replay import CsvError, ReadCounts, parse_ts, read_rows
from tools.sim.signals import Scheduled, demo_fleet, fleet

T0 = 1_700_000_000 * 10**9


def test_fleet_clock_merges_streams_in_time_order() -> None:
    specs = fleet(3, ["temperature", "power"], cadence_s=1.0, jitter=0.3, anomalies_per_1k=0.0)
    clock = FleetClock(specs, T0, 1)
    got = clock.due(T0 + 100 * 10**9)
    ts = [r.sample.ts_ns for r in got]
    assert ts == sorted(ts)
    per_stream = {s.stream_id: 0 for s in specs}
    for r in got:
        per_stream[r.spec.stream_id] += 1
    assert all(99 <= n <= 102 for n in per_stream.values())
    assert clock.next_ns > T0 + 100 * 10**9
    assert clock.due(T0) == []  # nothing new is due in the past


def test_fleet_clock_refuses_duplicate_streams() -> None:
    specs = fleet(["a", "a"], ["temperature"])
    with pytest.raises(ValueError, match="duplicate"):
        FleetClock(specs, T0, 1)


def test_truth_log_writes_each_published_anomaly_once(tmp_path: Path) -> None:
    specs = demo_fleet(
        2, ["temperature"],
        scheduled=[("dev01/temperature", Scheduled(30, "spike", 3, 12.0)),
                   ("dev02/temperature", Scheduled(50, "stuck", 20))],
        duplicate_rate=0.2,
    )
    clock = FleetClock(specs, T0, 2)
    log = TruthLog(tmp_path / "truth.csv", clock)
    new = [log.observe(r) for r in clock.due(T0 + 100 * 10**9)]
    log.close()
    assert sum(new) == 2
    rows = list(csv.DictReader((tmp_path / "truth.csv").read_text().splitlines()))
    assert [(r["stream"], r["kind"], r["start_step"], r["end_step"]) for r in rows] == [
        ("dev01/temperature", "spike", "30", "33"),
        ("dev02/temperature", "stuck", "50", "70"),
    ]
    assert rows[0]["start"] == "2023-11-14T22:13:50.000Z"


def test_payload_timestamp_formats() -> None:
    ts = 1_700_000_000_123_456_789
    assert encode_ts(ts, "ns") == ts
    assert encode_ts(ts, "ms") == 1_700_000_000_123
    assert encode_ts(ts, "s") == pytest.approx(1_700_000_000.123456789)
    assert encode_ts(ts, "iso") == "2023-11-14T22:13:20.123456Z"
    assert reading_payload(ts, 21.5) == b'{"ts":1700000000123,"value":21.5}'


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2016-07-01 00:00:00", 1_467_331_200 * 10**9),
        ("2016-07-01T00:00:00Z", 1_467_331_200 * 10**9),
        ("2016-07-01T02:00:00+02:00", 1_467_331_200 * 10**9),
        ("1467331200", 1_467_331_200 * 10**9),
        ("1467331200000", 1_467_331_200 * 10**9),
        ("1467331200.5", 1_467_331_200_500_000_000),
    ],
)
def test_parse_ts(text: str, ns: int) -> None:
    assert parse_ts(text) == ns


def test_read_rows_counts_and_skips_bad_input(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_text(
        "date,a,b\n"
        "2020-01-01 00:00:00,1.0,2.0\n"
        "yesterday,1.0,2.0\n"  # bad timestamp: row skipped
        "2020-01-01 01:00:00,oops,3.0\n"  # bad cell: the row's other cell still goes
        "2020-01-01 02:00:00,4.0\n"  # wrong cell count
        "\n"
        "2020-01-01 03:00:00,nan,5.0\n"
    )
    counts = ReadCounts()
    names, rows = read_rows(f, None, None, counts)
    got = list(rows)
    assert names == ["a", "b"]
    assert [r.values for r in got] == [(("a", 1.0), ("b", 2.0)), (("b", 3.0),), (("b", 5.0),)]
    assert (counts.rows, counts.bad_rows, counts.bad_cells) == (3, 2, 2)


def test_read_rows_refuses_unknown_columns(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_text("timestamp,value\n2020-01-01 00:00:00,1\n")
    with pytest.raises(CsvError, match="no timestamp column"):
        read_rows(f, "date", None, ReadCounts())
    with pytest.raises(CsvError, match="not found"):
        read_rows(f, None, ["OT"], ReadCounts())
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(CsvError, match="empty"):
        read_rows(tmp_path / "empty.csv", None, None, ReadCounts())
