"""Resampler policy: buckets, duplicates, late readings, gaps (properties with hypothesis)."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from service.streams.resample import Resampler, Step

C = 10  # cadence in ns: small numbers keep examples readable


def feed_all(res: Resampler, readings: list[tuple[int, float]], now: int) -> tuple[list[Step], list[str]]:
    drops = [r for ts, v in readings if (r := res.add(ts, 0, v)) is not None]
    return res.ready(now), drops


def test_bucket_is_labelled_by_its_end() -> None:
    res = Resampler(C, 1, tolerance=0, max_gap=5)
    assert [res.bucket_of(t) for t in (1, 10, 11, 20)] == [1, 1, 2, 2]


def test_mean_within_bucket_and_fed_when_clock_passes() -> None:
    res = Resampler(C, 1, tolerance=0, max_gap=5)
    for ts, v in ((11, 1.0), (15, 3.0)):
        assert res.add(ts, 0, v) is None
    assert res.ready(19) == []  # bucket 2 ends at 20
    assert res.ready(20) == [Step(2, (2.0,))]
    assert res.add(14, 0, 9.0) == "late"
    assert res.add(15, 0, 3.0) == "duplicate"


def test_later_reading_closes_bucket() -> None:
    res = Resampler(C, 1, tolerance=0, max_gap=5)
    res.add(11, 0, 1.0)
    res.add(21, 0, 2.0)
    assert res.ready(0) == [Step(2, (1.0,))]


def test_multivariate_missing_feature_is_nan() -> None:
    res = Resampler(C, 2, tolerance=0, max_gap=5)
    res.add(10, 1, 5.0)
    [step] = res.ready(10)
    assert math.isnan(step.values[0]) and step.values[1] == 5.0


series = st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=40)


@given(values=series, gaps=st.lists(st.integers(0, 3), min_size=40, max_size=40), seed=st.integers(0, 2**32))
@settings(max_examples=150, deadline=None)
def test_out_of_order_within_tolerance_equals_in_order(values: list[float], gaps: list[int], seed: int) -> None:
    """Shuffling readings inside a window of `tolerance` buckets changes nothing."""
    tol = 3
    buckets, b = [], 5
    for i in range(len(values)):
        b += 1 + (gaps[i] if i else 0)
        buckets.append(b)
    readings = [(bk * C, v) for bk, v in zip(buckets, values, strict=True)]
    now = buckets[-1] * C + 10 * C  # all buckets over, tolerance expired

    in_order = Resampler(C, 1, tol, max_gap=10)
    expected = []
    for ts, v in readings:
        in_order.add(ts, 0, v)
        expected += in_order.ready(ts)
    expected += in_order.ready(now)

    # Deliver in chunks, shuffled within each chunk of buckets spanning <= tol buckets.
    rng = random.Random(seed)
    shuffled = Resampler(C, 1, tol, max_gap=10)
    got: list[Step] = []
    i = 0
    while i < len(readings):
        j = i + 1
        while j < len(readings) and buckets[j] - buckets[i] <= tol:
            j += 1
        chunk = readings[i:j]
        rng.shuffle(chunk)
        for ts, v in chunk:
            assert shuffled.add(ts, 0, v) is None
        got += shuffled.ready(buckets[i] * C)  # the clock is at the chunk's first bucket
        i = j
    got += shuffled.ready(now)
    assert got == expected


@given(values=series, dup=st.lists(st.integers(0, 39), max_size=20))
@settings(max_examples=100, deadline=None)
def test_duplicates_change_nothing(values: list[float], dup: list[int]) -> None:
    readings = [((i + 1) * C, v) for i, v in enumerate(values)]
    a = Resampler(C, 1, 2, 5)
    steps_a, drops_a = feed_all(a, readings, 10**6)
    with_dups = readings + [readings[i % len(readings)] for i in dup]
    b = Resampler(C, 1, 2, 5)
    steps_b, drops_b = feed_all(b, with_dups, 10**6)
    assert steps_a == steps_b and drops_a == [] and set(drops_b) <= {"duplicate"}
    assert len(drops_b) == len(dup)
    assert [s.values[0] for s in steps_a] == values  # one step per bucket, value kept


@given(gap=st.integers(1, 20), max_gap=st.integers(0, 10))
def test_gaps_bridged_with_nan_or_reset(gap: int, max_gap: int) -> None:
    res = Resampler(C, 1, tolerance=0, max_gap=max_gap)
    res.add(C, 0, 1.0)
    res.ready(C)
    res.add((2 + gap) * C, 0, 2.0)
    steps = res.ready((2 + gap) * C)
    if gap <= max_gap:
        assert len(steps) == gap + 1 and all(math.isnan(s.values[0]) for s in steps[:-1])
        assert not any(s.reset for s in steps)
    else:
        assert steps == [Step(2 + gap, (2.0,), reset=True)]


def test_empty_bucket_waits_for_stragglers() -> None:
    res = Resampler(C, 1, tolerance=2, max_gap=10)
    res.add(10, 0, 1.0)
    assert len(res.ready(10)) == 1
    res.add(30, 0, 3.0)  # bucket 2 is empty so far
    assert res.ready(30) == []  # wait: bucket 2 may still come (tolerance 2)
    assert res.add(20, 0, 2.0) is None  # it does, late but within tolerance
    assert [s.values for s in res.ready(30)] == [(2.0,), (3.0,)]
    res.add(60, 0, 6.0)  # buckets 4, 5 empty
    assert res.ready(60) == []
    steps = res.ready(70)  # clock two buckets past bucket 5
    assert [s.bucket for s in steps] == [4, 5, 6] and math.isnan(steps[0].values[0])


def test_multivariate_bucket_waits_for_missing_features_until_grace() -> None:
    res = Resampler(C, 2, tolerance=0, max_gap=5, grace_ns=4)
    res.add(10, 0, 1.0)  # on the grid: bucket 1 has ended at once
    assert res.ready(10) == []  # feature 1 may still be on its way
    assert res.due_after(10) == 14
    res.add(10, 1, 2.0)
    assert res.ready(11) == [Step(1, (1.0, 2.0))]  # complete: no need to wait
    res.add(20, 0, 3.0)
    assert res.ready(23) == []
    [step] = res.ready(24)  # grace over: fed with feature 1 missing
    assert step.bucket == 2 and step.values[0] == 3.0 and math.isnan(step.values[1])
    # Too late; counted as "duplicate" because it carries the last fed timestamp (the
    # position keeps one timestamp, not one per feature).
    assert res.add(20, 1, 4.0) == "duplicate"
    assert res.add(19, 1, 4.0) == "late"


def test_a_backlog_closes_buckets_on_later_readings_not_on_the_wall_clock() -> None:
    # A gateway flushes buffered readings long after their buckets ended: two per bucket.
    res = Resampler(C, 1, tolerance=0, max_gap=5)
    now = 10_000
    res.add(11, 0, 1.0)
    assert res.ready(now) == []  # the wall clock is far ahead; the next reading decides
    assert res.add(15, 0, 3.0) is None  # merged, not "late"
    assert res.ready(now) == []
    res.add(21, 0, 5.0)
    assert res.ready(now) == [Step(2, (2.0,))]
    res.add(30, 0, 7.0)  # stamped on its bucket's end: nothing more can fall in bucket 3
    assert res.ready(now) == [Step(3, (6.0,))]
    # Caught up: a reading close to the clock makes the stream live again.
    res.add(now - 5, 0, 9.0)
    assert res.stream_clock(now) == now
    assert res.ready(now) == [Step(1000, (9.0,), reset=True)]  # after a gap too long to bridge


def test_a_live_stream_follows_the_wall_clock() -> None:
    res = Resampler(C, 1, tolerance=1, max_gap=5)
    res.add(95, 0, 1.0)
    assert res.stream_clock(100) == 100 and res.ready(100) == [Step(10, (1.0,))]
    res.add(101, 0, 2.0)
    assert res.ready(109) == [] and res.ready(110) == [Step(11, (2.0,))]  # when its bucket ends
    assert res.stream_clock(500) == 101  # silent for long: its own time, not the clock's
