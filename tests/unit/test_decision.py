"""Decision: M of N, hysteresis, cooldown; events alternate firing/resolved."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.anomaly.decision import Decider

R = np.array([0])


def run(d: Decider, scores: list[float], dt: int = 1) -> list[tuple[int, str]]:
    d.grow(1)
    events = []
    for t, s in enumerate(scores):
        fired, resolved = d.update(R, np.array([s]), np.array([t * dt]))
        events += [(t, "firing")] * fired.size + [(t, "resolved")] * resolved.size
    return events


@given(
    scores=st.lists(st.one_of(st.floats(0, 1), st.just(float("nan"))), max_size=80),
    m=st.integers(1, 4),
    extra=st.integers(0, 3),
    cooldown=st.integers(0, 10),
)
@settings(max_examples=200, deadline=None)
def test_properties(scores: list[float], m: int, extra: int, cooldown: int) -> None:
    n = m + extra
    thr = 0.9
    d = Decider(thr, 0.8, m, n, cooldown)
    events = run(d, scores)
    states = [e for _, e in events]
    # Events alternate, starting with firing.
    assert states == (["firing", "resolved"] * len(states))[: len(states)]
    scored = [(t, s) for t, s in enumerate(scores) if s == s]  # NaN scores are skipped
    last_resolved = None
    for t, state in events:
        window = [s for tt, s in scored if tt <= t][-n:]
        if state == "firing":
            assert sum(s >= thr for s in window) >= m  # never fires without M of N hot
            if last_resolved is not None:
                assert t - last_resolved >= cooldown
        else:
            assert sum(s >= 0.8 for s in window) < m
            last_resolved = t


def test_hysteresis_holds_between_thresholds() -> None:
    d = Decider(0.9, 0.5, 1, 1, 0)
    assert run(d, [0.95, 0.7, 0.7, 0.4]) == [(0, "firing"), (3, "resolved")]


def test_cooldown_in_stream_time() -> None:
    d = Decider(0.9, None, 1, 1, cooldown_ns=5)
    assert run(d, [0.95, 0.1, 0.95, 0.95, 0.1, 0.1, 0.1, 0.95]) == [
        (0, "firing"), (1, "resolved"), (7, "firing")
    ]


def test_per_row_threshold_override() -> None:
    d = Decider(0.99, None, 1, 1, 0)
    d.grow(2)
    d.set_threshold(1, 0.5)
    fired, _ = d.update(np.array([0, 1]), np.array([0.6, 0.6]), np.array([0, 0]))
    assert fired.tolist() == [1]
    with pytest.raises(ValueError):
        d.set_threshold(0, 1.5)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="min_count"):
        Decider(0.9, None, 4, 3, 0)
    with pytest.raises(ValueError, match="clear_threshold"):
        Decider(0.9, 0.95, 1, 1, 0)
