"""The newer fault kinds: silent, out_of_range, degradation (labels, values, determinism)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tools.sim.live import FleetClock, TruthLog
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
    generate,
    iter_readings,
)

T0 = 1_700_000_000 * 10**9


def spec(quantity: str = "temperature", *scheduled: Scheduled, **kw: object) -> StreamSpec:
    fields: dict[str, object] = {"cadence_s": 1.0, "compression": 300.0, "anomalies_per_1k": 0.0}
    fields.update(kw)
    return StreamSpec("dev1", QUANTITIES[quantity], scheduled=scheduled, **fields)  # type: ignore[arg-type]


def code(kind: str) -> int:
    return ANOMALY_KINDS.index(kind) + 1


def test_old_kinds_keep_their_codes_and_random_draws() -> None:
    assert ANOMALY_KINDS[:5] == CLASSIC_KINDS == ("spike", "level_shift", "stuck", "variance_burst", "drift")
    assert StreamSpec("d", QUANTITIES["power"]).kinds == CLASSIC_KINDS
    # Every quantity has a physical limit, so out_of_range can be placed on any of them.
    assert all(q.lower is not None or q.upper is not None for q in QUANTITIES.values())


def test_silent_steps_are_nan_on_the_grid_and_never_delivered() -> None:
    s = spec("temperature", Scheduled(100, "silent", 40))
    sig = StreamSignal(s, T0, 3)
    grid = sig.grid(0, 300)
    assert np.all(np.isnan(grid.values[100:140])) and np.all(grid.labels[100:140] == code("silent"))
    assert not np.isnan(grid.values[:100]).any() and not np.isnan(grid.values[140:]).any()
    plain = StreamSignal(replace(s, scheduled=()), T0, 3).grid(0, 300)
    assert np.array_equal(grid.values[140:], plain.values[140:])  # nothing else moves
    delivered = generate(s, T0, 300, 3)
    assert len(delivered.ts_ns) == 260 and not np.isnan(delivered.values).any()
    steps = (delivered.ts_ns - T0) // 10**9
    assert not ((steps >= 100) & (steps < 140)).any()
    live = list(itertools.islice(iter_readings(s, T0, 3), 260))
    assert [r.ts_ns for r in live] == delivered.ts_ns.tolist()
    assert [r.step for r in live][99:101] == [99, 140]


@pytest.mark.parametrize(
    ("quantity", "magnitude", "beyond"),
    [("humidity", 3.0, "upper"), ("humidity", -3.0, "lower"), ("power", 3.0, "lower"),
     ("temperature", 0.0, "upper"), ("co2", 2.0, "lower")],
)
def test_out_of_range_rails_beyond_the_physical_limit(quantity: str, magnitude: float, beyond: str) -> None:
    q = QUANTITIES[quantity]
    s = spec(quantity, Scheduled(50, "out_of_range", 10, magnitude))
    g = StreamSignal(s, T0, 1).grid(0, 100)
    hit = g.values[50:60]
    assert np.all(g.labels[50:60] == code("out_of_range")) and np.all(g.labels[60:] == 0)
    if beyond == "upper":
        assert q.upper is not None and np.all(hit > q.upper)
    else:
        assert q.lower is not None and np.all(hit < q.lower)
    assert np.allclose(hit, np.round(hit, q.decimals))
    outside = g.values[np.r_[0:50, 60:100]]  # everything else stays clipped to the limits
    assert (q.lower is None or outside.min() >= q.lower) and (q.upper is None or outside.max() <= q.upper)


@pytest.mark.parametrize("quantity", sorted(QUANTITIES))
def test_operating_limits_hold_clean_readings(quantity: str) -> None:
    sig = StreamSignal(spec(quantity), T0, 4)
    lower, upper = sig.operating_limits()
    assert lower is not None or upper is not None
    v = sig.grid(0, 3 * BLOCK).values  # several signal days at compression 300
    assert (lower is None or v.min() > lower) and (upper is None or v.max() < upper)


@pytest.mark.parametrize(("quantity", "magnitude"), [("temperature", 3.0), ("temperature", -3.0), ("power", -2.0)])
def test_degradation_ramps_across_the_operating_limit(quantity: str, magnitude: float) -> None:
    s = spec(quantity, Scheduled(200, "degradation", 300, magnitude))
    sig = StreamSignal(s, T0, 2)
    lower, upper = sig.operating_limits()
    [ev] = sig.events(0, 700)
    assert ev.kind == "degradation" and ev.crossing is not None and 200 < ev.crossing < 500
    g = sig.grid(0, 700)
    assert np.all(g.labels[200:500] == code("degradation")) and np.all(g.labels[500:] == 0)
    above = upper is not None and (magnitude >= 0 or lower is None)
    beyond = g.values > upper if above else g.values < lower  # type: ignore[operator]
    assert not beyond[: ev.crossing].any() and beyond[ev.crossing]
    assert beyond[499]  # the ramp ends beyond the limit
    assert not beyond[500:].any()  # and snaps back after the event
    # A slow ramp: the crossing comes late in the event, after a long approach.
    assert ev.crossing - 200 > 100


def test_new_kinds_are_deterministic_and_chunk_independent() -> None:
    kinds = ("silent", "out_of_range", "degradation", "spike")
    s = spec("humidity", kinds=kinds, anomalies_per_1k=4.0, anomaly_free_steps=200)
    whole = generate(s, T0, 2 * BLOCK + 100, 8)
    again = generate(s, T0, 2 * BLOCK + 100, 8)
    assert all(np.array_equal(a, b) for a, b in zip(whole, again, strict=True))
    sig = StreamSignal(s, T0, 8)
    parts = [sig.delivered(0, 1500), sig.delivered(1500, 2 * BLOCK + 100)]
    assert np.array_equal(np.concatenate([p.values for p in parts]), whole.values)
    evs = events(s, T0, 2 * BLOCK + 100, 8)
    assert {e.kind for e in evs} <= set(kinds) and len(evs) >= 5
    truth = np.zeros(2 * BLOCK + 100, dtype=np.int8)
    for e in evs:
        truth[e.start : e.end] = code(e.kind)
        assert (e.crossing is not None) == (e.kind == "degradation")
    assert np.array_equal(StreamSignal(s, T0, 8).grid(0, 2 * BLOCK + 100).labels, truth)


def test_truth_log_records_a_silent_anomaly_once_the_stream_speaks_again(tmp_path: Path) -> None:
    specs = demo_fleet(
        1, ["temperature"], scheduled=[("dev01/temperature", Scheduled(30, "silent", 20)),
                                       ("dev01/temperature", Scheduled(70, "out_of_range", 2, 4.0))],
        duplicate_rate=0.0, jitter=0.0,
    )
    clock = FleetClock(specs, T0, 2)
    log = TruthLog(tmp_path / "truth.csv", clock)
    new = [log.observe(r) for r in clock.due(T0 + 100 * 10**9)]
    log.close()
    assert sum(new) == 2
    assert [(r[1], r[2], r[3]) for r in log.rows] == [("silent", 30, 50), ("out_of_range", 70, 72)]
