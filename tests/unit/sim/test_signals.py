"""The simulator's signals: deterministic, chunk-independent, labelled truthfully."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from tools.sim.signals import (
    ANOMALY_KINDS,
    BLOCK,
    CLASSIC_KINDS,
    QUANTITIES,
    Scheduled,
    StreamSignal,
    StreamSpec,
    demo_fleet,
    events,
    fleet,
    generate,
    iter_readings,
)

T0 = 1_700_000_000 * 10**9


def spec(**kw: object) -> StreamSpec:
    fields: dict[str, object] = {"cadence_s": 60.0, "anomalies_per_1k": 0.0}
    fields.update(kw)
    return StreamSpec("dev1", QUANTITIES["temperature"], **fields)  # type: ignore[arg-type]


def test_same_seed_same_series_other_seed_differs() -> None:
    s = spec(anomalies_per_1k=2.0)
    a, b = generate(s, T0, 3000, 1), generate(s, T0, 3000, 1)
    assert np.array_equal(a.values, b.values) and np.array_equal(a.labels, b.labels)
    c = generate(s, T0, 3000, 2)
    assert not np.array_equal(a.values, c.values)


def test_regular_grid_by_default() -> None:
    ts, values, labels = generate(spec(), T0, 500, 0)
    assert len(ts) == len(values) == len(labels) == 500
    assert np.all(np.diff(ts) == 60 * 10**9) and ts[0] == T0
    assert np.all(labels == 0)


def test_chunking_does_not_change_the_series() -> None:
    s = spec(anomalies_per_1k=3.0, gap_rate=0.01, duplicate_rate=0.02, jitter=0.2)
    whole = generate(s, T0, 2 * BLOCK + 300, 9)
    sig = StreamSignal(s, T0, 9)
    parts = [sig.delivered(0, 1000), sig.delivered(1000, BLOCK + 17), sig.delivered(BLOCK + 17, 2 * BLOCK + 300)]
    assert np.array_equal(np.concatenate([p.values for p in parts]), whole.values)
    assert np.array_equal(np.concatenate([p.ts_ns for p in parts]), whole.ts_ns)
    live = list(itertools.islice(iter_readings(s, T0, 9), len(whole.ts_ns)))
    assert [r.ts_ns for r in live] == whole.ts_ns.tolist()
    assert [r.value for r in live] == whole.values.tolist()
    assert [r.label for r in live] == whole.labels.tolist()


def test_delivery_effects_never_change_values() -> None:
    noisy = spec(anomalies_per_1k=3.0, gap_rate=0.02, duplicate_rate=0.05, jitter=0.3)
    clean = StreamSignal(noisy.clean(), T0, 4).grid(0, 3000)
    sig = StreamSignal(noisy, T0, 4)
    delivered = sig.delivered(0, 3000)
    steps = (delivered.ts_ns - T0 + 30 * 10**9) // (60 * 10**9)  # nearest grid step
    assert np.array_equal(delivered.values, clean.values[steps])
    assert len(np.unique(steps)) < 3000  # gaps lost some steps
    assert len(delivered.ts_ns) > len(np.unique(steps))  # duplicates repeated some
    assert np.all(np.abs(delivered.ts_ns - clean.ts_ns[steps]) <= 0.3 * 60 * 10**9)
    assert np.all(np.diff(delivered.ts_ns) >= 0)  # jitter < cadence / 2 keeps order


@pytest.mark.parametrize("kind", CLASSIC_KINDS)  # the newer kinds: test_signals_faults.py
def test_scheduled_anomaly_is_labelled_and_visible(kind: str) -> None:
    base = spec()
    anomalous = replace(base, scheduled=(Scheduled(400, kind, 40, 10.0),))
    plain = generate(base, T0, 600, 3)
    hit = generate(anomalous, T0, 600, 3)
    code = ANOMALY_KINDS.index(kind) + 1
    assert np.all(hit.labels[400:440] == code)
    assert np.all(hit.labels[:400] == 0) and np.all(hit.labels[440:] == 0)
    assert np.array_equal(hit.values[:400], plain.values[:400])
    assert np.array_equal(hit.values[440:], plain.values[440:])
    diff = hit.values[400:440] - plain.values[400:440]
    sigma = QUANTITIES["temperature"].noise
    if kind == "stuck":
        assert len(np.unique(hit.values[400:440])) == 1
        assert np.abs(diff).max() > 2 * sigma  # the daily cycle moves away from it
    elif kind == "variance_burst":
        assert diff.std() > 4 * sigma
    else:
        assert np.abs(diff).max() >= 8 * sigma


def test_random_anomalies_match_events_and_respect_warmup() -> None:
    s = spec(anomalies_per_1k=5.0, anomaly_free_steps=500)
    series = generate(s, T0, 3 * BLOCK, 11)
    evs = events(s, T0, 3 * BLOCK, 11)
    assert len(evs) >= 5
    assert {e.kind for e in evs} <= set(ANOMALY_KINDS)
    truth = np.zeros(3 * BLOCK, dtype=np.int8)
    for e in evs:
        assert e.start >= 500
        truth[e.start : e.end] = ANOMALY_KINDS.index(e.kind) + 1
    assert np.array_equal(series.labels, truth)


def test_daily_cycle_follows_compression() -> None:
    # With compression 300 and 1 s cadence a signal day is 288 steps.
    s = StreamSpec("d", QUANTITIES["power"], cadence_s=1.0, compression=300.0, anomalies_per_1k=0.0)
    v = StreamSignal(s, 0, 1).grid(0, 288 * 4).values
    day = v.reshape(4, 288)
    # Days look alike (weekly and drift are slow next to the daily swing).
    assert np.corrcoef(day[1], day[2])[0, 1] > 0.9
    assert day.max() - day.min() > 2 * QUANTITIES["power"].daily_amp * 0.6


def test_physical_limits_and_resolution() -> None:
    s = StreamSpec("d", QUANTITIES["humidity"], scheduled=(Scheduled(10, "level_shift", 50, 500.0),))
    v = generate(s, 0, 100, 0).values
    assert v.max() <= 100.0 and v.min() >= 0.0
    assert np.allclose(v, np.round(v, 1))


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="anomaly kind"):
        Scheduled(1, "meteor", 3)
    with pytest.raises(ValueError, match="jitter"):
        spec(jitter=0.7)
    with pytest.raises(ValueError, match="unknown quantities"):
        fleet(2, ["temperature", "flux"])
    with pytest.raises(ValueError, match="unknown streams"):
        demo_fleet(2, scheduled=[("dev09/temperature", Scheduled(5, "spike", 1))])


def test_fleet_streams_differ_per_device() -> None:
    specs = fleet(3, ["temperature"], anomalies_per_1k=0.0)
    assert [s.stream_id for s in specs] == ["dev01/temperature", "dev02/temperature", "dev03/temperature"]
    means = {round(float(generate(s, T0, 300, 1).values.mean()), 3) for s in specs}
    assert len(means) == 3


def test_an_event_spanning_blocks_is_one_event() -> None:
    # A variance burst across a block boundary: the same extra noise whichever block asks.
    s = spec(scheduled=(Scheduled(BLOCK - 20, "variance_burst", 40, 6.0),), anomalies_per_1k=3.0)
    sig = StreamSignal(s, T0, 5)
    whole = sig.grid(BLOCK - 30, BLOCK + 30)
    again = StreamSignal(s, T0, 5)
    tail = again.grid(BLOCK, BLOCK + 30)  # computes only the second block
    assert np.array_equal(whole.values[30:], tail.values)
    plain = StreamSignal(replace(s, scheduled=()), T0, 5).grid(BLOCK - 30, BLOCK + 30)
    assert np.all(whole.labels[10:50] == ANOMALY_KINDS.index("variance_burst") + 1)
    assert np.abs(whole.values[10:50] - plain.values[10:50]).std() > 3 * QUANTITIES["temperature"].noise


def test_an_events_effect_does_not_depend_on_other_events() -> None:
    burst = (Scheduled(BLOCK - 20, "variance_burst", 40, 6.0),)
    effects = []
    for rate in (0.0, 3.0):
        base = spec(anomalies_per_1k=rate)
        hit = StreamSignal(replace(base, scheduled=burst), T0, 5).grid(BLOCK - 20, BLOCK + 20)
        plain = StreamSignal(base, T0, 5).grid(BLOCK - 20, BLOCK + 20)
        effects.append(hit.values - plain.values)
    assert np.allclose(effects[0], effects[1], atol=0.011)  # equal up to the sensor's rounding
