"""The soak report's Prometheus parsing: histogram buckets, differences, quantiles."""

from __future__ import annotations

import math

from tools.bench.soak import _counter, _diff, _histogram, _quantile

TEXT = """\
# HELP sensorcast_step_batch_seconds Latency of one batched model call.
sensorcast_step_batch_seconds_bucket{le="0.001",model="a"} 5.0
sensorcast_step_batch_seconds_bucket{le="0.01",model="a"} 9.0
sensorcast_step_batch_seconds_bucket{le="+Inf",model="a"} 10.0
sensorcast_step_batch_seconds_bucket{le="0.001",model="b"} 0.0
sensorcast_step_batch_seconds_bucket{le="0.01",model="b"} 0.0
sensorcast_step_batch_seconds_bucket{le="+Inf",model="b"} 10.0
sensorcast_step_batch_seconds_count{model="a"} 10.0
sensorcast_steps_total{model="a"} 100.0
sensorcast_steps_total{model="b"} 23.0
"""


def test_histogram_sums_labels_and_orders_bounds() -> None:
    assert _histogram(TEXT, "sensorcast_step_batch_seconds") == [(0.001, 5.0), (0.01, 9.0), (math.inf, 20.0)]


def test_quantiles_are_bucket_upper_bounds() -> None:
    h = _histogram(TEXT, "sensorcast_step_batch_seconds")
    assert _quantile(h, 0.25) == 0.001
    assert _quantile(h, 0.45) == 0.01
    assert _quantile(h, 0.99) == math.inf
    assert _quantile([], 0.5) is None


def test_diff_gives_the_window_between_two_scrapes() -> None:
    before = [(0.001, 5.0), (0.01, 9.0), (math.inf, 20.0)]
    after = [(0.001, 7.0), (0.01, 19.0), (math.inf, 30.0)]
    assert _diff(before, after) == [(0.001, 2.0), (0.01, 10.0), (math.inf, 10.0)]


def test_counter_sums_every_label_set() -> None:
    assert _counter(TEXT, "sensorcast_steps_total") == 123.0
