"""Data-quality stage: out_of_range, rate_of_change, stuck and silent fire and resolve on
their own; invalid values and the hold mask; missing readings; rows (checkpoint, reset)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.config import AnomalySettings, StreamRules
from service.streams.quality_stage import QualityStage, QualityVerdicts
from service.streams.rules import ResolvedRules, resolve

S = 1_000_000_000  # 1 s cadence, in ns
NAN = float("nan")


def rules(n_in: int = 1, **kw: float) -> ResolvedRules:
    own = StreamRules(**kw)  # type: ignore[arg-type]
    return resolve(AnomalySettings(), None, own, [f"f{i}" for i in range(n_in)], 1.0)


def stage(n_in: int = 1, rows: int = 1, **kw: float) -> QualityStage:
    q = QualityStage(n_in, S)
    q.grow(rows)
    if kw:
        q.configure(np.arange(rows), [rules(n_in, **kw)] * rows)
    return q


def feed(q: QualityStage, values: list[float], t0: int = 0, row: int = 0) -> list[QualityVerdicts]:
    """One reading per step on one row; returns each step's verdicts."""
    out = []
    for k, v in enumerate(values):
        out.append(q.assess(np.array([row]), np.array([(t0 + k) * S]), np.array([[v]], np.float32)))
    return out


def warm(n: int) -> list[float]:
    """Readings that change every step: the stuck check's warm-up, learning runs of 0."""
    return [float(k % 2) for k in range(n)]


def events(vs: list[QualityVerdicts]) -> list[tuple[int, str, str]]:
    return [(k, "fired", f.check) for k, v in enumerate(vs) for f in v.fired] + [
        (k, "resolved", f.check) for k, v in enumerate(vs) for f in v.resolved
    ]


def test_out_of_range_fires_on_the_reading_and_resolves_after_readings_back_in_range() -> None:
    q = stage(min=0, max=100)
    vs = feed(q, [50, 51, 150, 52, NAN, 53, 54, 55])
    assert [f.check for f in vs[2].fired] == ["out_of_range"]  # delay 0: the offending reading itself
    f = vs[2].fired[0]
    assert (f.value, f.ts_ns, f.onset_ns, f.feature, f.detail["side"], f.detail["limit"]) == (150, 2 * S, 2 * S, 0, "above", "100")
    assert [v.invalid[0, 0] for v in vs] == [False, False, True, False, False, False, False, False]
    # three readings back in range (the missing one does not count): resolved at step 6
    assert events(vs) == [(2, "fired", "out_of_range"), (6, "resolved", "out_of_range")]
    assert [bool(v.hold[0]) for v in vs] == [False, False, True, True, True, True, False, False]
    assert vs[6].resolved[0].onset_ns == 2 * S and vs[6].resolved[0].value == 54


def test_out_of_range_below_and_no_limit() -> None:
    q = stage(min=-5)
    vs = feed(q, [-5, -6, 1e9])  # the limit itself is in range; no max: any large value is fine
    assert not vs[0].invalid.any() and vs[1].fired[0].detail == {"side": "below", "limit": "-5"}
    assert not vs[2].fired and not vs[2].invalid.any()
    q = stage(max=5)
    assert not feed(q, [5])[0].invalid.any()


def test_rate_of_change_spike_fires_its_return_stays_valid() -> None:
    q = stage(max_rate=5)
    vs = feed(q, [10, 11, 12, 40, 12, 13, 12, 13])
    assert [v.invalid[0, 0] for v in vs] == [False, False, False, True, False, False, False, False]
    assert events(vs) == [(3, "fired", "rate_of_change"), (6, "resolved", "rate_of_change")]
    f = vs[3].fired[0]
    assert (f.value, f.detail["rate"], f.detail["max_rate"], f.detail["previous"]) == (40, "28", "5", "12")


def test_rate_of_change_uses_the_time_between_readings() -> None:
    q = stage(max_rate=5)
    # 20 units over 10 s (missing readings between) is 2 per second: fine
    vs = feed(q, [10, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, 30])
    assert not events(vs) and not any(v.invalid.any() for v in vs)


def test_rate_of_change_new_level_after_a_jump_is_valid() -> None:
    q = stage(max_rate=5)
    vs = feed(q, [10, 10, 50, 50, 50, 50, 50])
    assert [v.invalid[0, 0] for v in vs] == [False, False, True, False, False, False, False]
    assert events(vs) == [(2, "fired", "rate_of_change"), (5, "resolved", "rate_of_change")]


def test_an_out_of_range_reading_is_not_also_a_rate_alert() -> None:
    q = stage(max=100, max_rate=5)
    vs = feed(q, [10, 500, 10, 10, 10])
    assert [f.check for v in vs for f in v.fired] == ["out_of_range"]


def quantised(seed: int, n: int) -> list[float]:
    """A slow signal with noise, read at a resolution of 0.1: readings repeat in runs."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = 20 + 0.3 * np.sin(t / 200) + rng.normal(0, 0.03, n)
    return [float(v) for v in np.round(x, 1)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stuck_learns_a_quantised_sensor_and_flags_it_only_when_truly_stuck(seed: int) -> None:
    q = stage(stuck_steps=10)
    normal = quantised(seed, 4000)
    vs = feed(q, normal)
    assert not events(vs), "a quantised sensor repeating readings is not stuck"
    learned = int(q.stuck_learned[0, 0])
    assert learned >= 10  # it did repeat for longer than stuck_steps, and was learned
    stuck = feed(q, [20.0] * (3 * learned + 5) + [20.5], t0=4000)
    fired = [(k, f) for k, v in enumerate(stuck) for f in v.fired]
    assert len(fired) == 1 and fired[0][1].check == "stuck"
    k, f = fired[0]
    limit = max(10, 3 * learned + 1)  # longer than 3x the longest normal run
    assert f.detail["run_steps"] == f.detail["limit_steps"] == str(limit)
    assert stuck[k].hold[0] and stuck[-2].hold[0]
    assert [r.check for r in stuck[-1].resolved] == ["stuck"] and not stuck[-1].hold[0]
    assert not stuck[-1].invalid.any()  # stuck values still reach the model


def test_stuck_fires_at_stuck_steps_with_the_run_onset_and_missing_values_do_not_break_it() -> None:
    q = stage(stuck_steps=5)
    vs = feed(q, [0.0, 1.0] + [7.0] * 40 + [NAN] * 5 + [7.0] * 10)
    assert events(vs) == [(54, "fired", "stuck")], "judged from the 50th reading (10 x stuck_steps) on"
    q = stage(stuck_steps=5)
    feed(q, warm(50))
    vs = feed(q, [1, 2, 3, 7, 7, NAN, 7, 7, NAN, 7, 7, 7, 8], t0=50)
    # run starts at step 3 (7); no-change steps: 4, 6, 7, 9, 10 -> the 5th is at step 10
    assert events(vs) == [(10, "fired", "stuck"), (12, "resolved", "stuck")]
    f = vs[10].fired[0]
    assert (f.onset_ns, f.value, f.detail["run_steps"]) == (53 * S, 7, "5")
    assert vs[12].resolved[0].detail == {"reason": "changed"}


def test_stuck_tolerance_and_a_channel_constant_since_start() -> None:
    q = stage(stuck_steps=5, stuck_tolerance=0.5)
    vs = feed(q, [5.0] * 500)
    assert not events(vs), "never changed: a constant channel (setpoint), not a stuck sensor"
    q = stage(stuck_steps=5, stuck_tolerance=0.5)
    feed(q, warm(50))
    vs = feed(q, [6.0, 6.2, 5.9, 6.4, 6.1, 5.8, 6.3], t0=50)  # within 0.5 of 6.0: no change
    assert events(vs) == [(5, "fired", "stuck")]


def test_stuck_off_and_turned_off_while_firing() -> None:
    q = stage(stuck_steps=0)
    assert not events(feed(q, [1, 2] + [3] * 100))
    q = stage(stuck_steps=3)
    vs = feed(q, [*warm(30), 3, 3, 3, 3])
    assert events(vs) == [(33, "fired", "stuck")]
    q.configure(np.array([0]), [rules(stuck_steps=0)])
    vs = feed(q, [3], t0=34)
    assert [r.check for r in vs[0].resolved] == ["stuck"]


def test_silent_fires_from_the_watchdog_without_a_reading_and_resolves_on_the_next() -> None:
    q = stage(rows=3, silent_after=60)  # 60 cadences of 1 s
    feed(q, [1.0, 2.0], row=0)
    rows = np.arange(3)
    last = np.array([1 * S, 1 * S, -1])  # row 2: never seen, skipped
    v = q.silent(rows, last, 60 * S)
    assert not v.fired and not v.hold.any()
    v = q.silent(rows, last, 61 * S)
    assert [(f.row, f.check, f.feature, f.onset_ns, f.ts_ns) for f in v.fired] == [
        (0, "silent", -1, S, 61 * S), (1, "silent", -1, S, 61 * S)]
    assert v.fired[0].detail["silent_s"] == "60" and np.isnan(v.fired[0].value)
    assert v.hold.tolist() == [True, True, False]
    assert not q.silent(rows, last, 90 * S).fired  # fires once
    assert q.firing_checks(rows) == [(0, "silent"), (1, "silent")]
    # an all-missing reading is not a reading
    v = q.assess(np.array([0, 1]), np.array([100 * S, 100 * S]), np.array([[NAN], [5.0]], np.float32))
    assert [(r.row, r.check, r.detail["silent_s"]) for r in v.resolved] == [(1, "silent", "99")]
    assert v.hold.tolist() == [True, False]


def test_silent_off_and_default() -> None:
    q = stage(silent_after=0)
    assert not q.silent(np.array([0]), np.array([0]), 10**6 * S).fired
    q = QualityStage(1, S)  # defaults: AnomalySettings().silent_after cadences, at least 30 s
    q.grow(1)
    assert not q.silent(np.array([0]), np.array([0]), 29 * S).fired
    assert q.silent(np.array([0]), np.array([0]), 30 * S).fired


def test_multivariate_rows_name_the_feature_and_fire_once_per_check() -> None:
    q = QualityStage(3, S)
    q.grow(2)
    own = StreamRules(max=100, features={"f2": StreamRules(max=10)})
    q.configure(np.array([0, 1]), [resolve(AnomalySettings(), None, own, ["f0", "f1", "f2"], 1.0)] * 2)
    rows = np.array([0, 1])
    x = np.array([[50, 50, 20], [50, 50, 5]], np.float32)  # f2 of row 0 is above its own max 10
    v = q.assess(rows, np.array([0, 0]), x)
    assert [(f.row, f.feature, f.value) for f in v.fired] == [(0, 2, 20)]
    assert v.invalid.tolist() == [[False, False, True], [False, False, False]]
    x = np.array([[500, 50, 20], [50, 50, 5]], np.float32)  # a second feature: still one alert
    v = q.assess(rows, np.array([S, S]), x)
    assert not v.fired and v.invalid[0].tolist() == [True, False, True]
    ok = np.array([[50, 50, 5], [50, 50, 5]], np.float32)
    vs = [q.assess(rows, np.array([t * S, t * S]), ok) for t in range(2, 5)]
    assert [(r.row, r.check, r.feature) for r in vs[2].resolved] == [(0, "out_of_range", 2)]


def test_a_batch_of_many_rows_flags_only_the_offenders() -> None:
    n = 10_000
    q = stage(rows=n, max=100, max_rate=50)
    rows = np.arange(n)
    x = np.full((n, 1), 20, np.float32)
    q.assess(rows, np.zeros(n, np.int64), x)
    x[[7, 4242], 0] = [1000, 90]  # row 7 out of range, row 4242 too fast
    v = q.assess(rows, np.full(n, S), x)
    assert sorted((f.row, f.check) for f in v.fired) == [(7, "out_of_range"), (4242, "rate_of_change")]
    assert np.flatnonzero(v.hold).tolist() == [7, 4242] and np.flatnonzero(v.invalid[:, 0]).tolist() == [7, 4242]


def test_unconfigured_rows_use_the_defaults_and_bad_rules_are_refused() -> None:
    q = QualityStage(2, S, defaults=rules(2, max=10))
    q.grow(2)
    v = q.assess(np.array([1]), np.array([0]), np.array([[11, 0]], np.float32))
    assert [f.check for f in v.fired] == ["out_of_range"]
    with pytest.raises(ValueError, match="shape"):
        q.configure(np.array([0]), [rules(3)])
    with pytest.raises(ValueError, match="rows"):
        q.configure(np.array([0, 1]), [rules(2)])
    q.configure(np.array([1]), [rules(2, max=100)])
    q.clear(np.array([1]))  # a freed row is as new: the defaults again
    assert q.hi[1].tolist() == [10, 10] and not q.firing[1].any()


def test_export_load_round_trip_continues_identically() -> None:
    a = stage(rows=2, max=100, stuck_steps=4)
    rows = np.array([0, 1])
    seq = [[k % 2, k % 2] for k in range(40)] + [[1, 2], [1, 3], [150, 3], [1, 3], [2, 3]]
    for t, x in enumerate(seq):
        a.assess(rows, np.array([t * S, t * S]), np.array(x, np.float32).reshape(2, 1))
    saved = a.export(rows)
    assert "quality.stuck_learned" in saved and "quality.hi" not in saved  # limits come from configure
    b = stage(rows=3, max=100, stuck_steps=4)
    b.load(np.array([2, 0]), saved)
    assert b.firing_checks(np.array([2])) == [(2, "out_of_range")] and not b.firing_checks(np.array([0, 1]))
    rest = [[1, 3], [1, 3], [1, 3], [1, 3], [5, 3]]
    for t, x in enumerate(rest, start=len(seq)):
        ts = np.array([t * S, t * S])
        va = a.assess(rows, ts, np.array(x, np.float32).reshape(2, 1))
        vb = b.assess(np.array([2, 0]), ts, np.array(x, np.float32).reshape(2, 1))
        ea = [(f.check, f.feature, f.onset_ns, f.detail) for f in va.fired + va.resolved]
        eb = [(f.check, f.feature, f.onset_ns, f.detail) for f in vb.fired + vb.resolved]
        assert ea == eb and (va.hold == vb.hold).all()
    assert a.firing_checks(rows) == [(1, "stuck")]


def test_reset_keeps_learned_runs_and_limits_drop_forgets_firing() -> None:
    q = stage(max=100, stuck_steps=3)
    feed(q, [0, 1, 1, 1, 1, 2, 200])
    assert q.firing_checks(np.array([0])) == [(0, "out_of_range")]
    assert q.stuck_learned[0, 0] == 3
    q.reset(np.array([0]))
    assert not q.firing_checks(np.array([0])) and q.stuck_learned[0, 0] == 3 and q.hi[0, 0] == 100
    assert [f.check for v in feed(q, [200], t0=10) for f in v.fired] == ["out_of_range"]
    q.drop(np.array([0]))
    assert not q.holding(np.array([0])).any()
    vs = feed(q, [50, 50, 50], t0=11)
    assert not events(vs), "a dropped alert does not resolve later"


@given(values=st.lists(st.one_of(st.floats(-50, 150), st.just(NAN)), max_size=60))
@settings(max_examples=150, deadline=None)
def test_events_alternate_per_check(values: list[float]) -> None:
    q = stage(min=0, max=100, max_rate=20, stuck_steps=3)
    vs = feed(q, values)
    for check in ("out_of_range", "rate_of_change", "stuck"):
        seq = [e for _, e, c in sorted(events(vs)) if c == check]
        assert seq == (["fired", "resolved"] * len(seq))[: len(seq)]
    for v, x in zip(vs, np.float32(values).tolist(), strict=True):
        if x != x:
            assert not v.invalid[0, 0], "a missing value is never invalid"
        elif not 0 <= x <= 100:
            assert v.invalid[0, 0]


def test_doctests() -> None:
    import doctest

    from service.anomaly import quality

    result = doctest.testmod(quality)
    assert result.attempted > 0 and result.failed == 0


def test_a_limit_removed_while_firing_resolves_and_checks_off_in_the_batch_are_skipped() -> None:
    q = stage(rows=2, max=100, stuck_steps=2)
    q.configure(np.array([1]), [rules()])  # row 1: the defaults (stuck_steps 30, no limits)
    v = q.assess(np.array([0, 1]), np.array([0, 0]), np.array([[200], [200]], np.float32))
    assert [(f.row, f.check) for f in v.fired] == [(0, "out_of_range")]
    q.configure(np.array([0]), [rules()])  # the max goes away while the alert fires
    vs = feed(q, [300, 300, 300], t0=1)
    assert events(vs) == [(2, "resolved", "out_of_range")]
    assert not q.firing_checks(np.array([0, 1]))
