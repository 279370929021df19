"""Anomalies are kept out of the recurrent state; a sustained shift is accepted as the new level.

Property tests on the shipped demo model (models/demo/1, 1 s cadence) through the real
engine: a flagged reading never moves the state (whatever its value, the state after it
is the same), and after ``accept_after_steps`` readings of a sustained shift the model
follows the new level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from service.config import Settings
from service.metrics import Metrics
from service.records import Alert, Reading, StreamKey
from service.runtime.registry import ModelRegistry
from service.streams.engine import Engine

MODELS = Path(__file__).resolve().parents[2] / "models"
S = 10**9
T0 = 1_700_000_000 * S
KEY = StreamKey("dev01", "value")  # a demo device: the demo model serves the simulator's devices only
N = 240  # past the demo model's 150 warm-up steps and the evidence's 30 residuals


def clean(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 20 + 5 * np.sin(np.arange(n) / 10) + rng.normal(0, 0.1, n)


def engine(tmp: Path, **anomaly: object) -> tuple[Engine, list[Alert]]:
    s = Settings(models={"dir": MODELS, "watch": False},
                 streams={"checkpoint_dir": tmp / "state", "warmup_wait_s": 30.0}, anomaly=anomaly)
    alerts: list[Alert] = []
    return Engine(s, ModelRegistry(MODELS), None, Metrics(), on_alert=alerts.append), alerts


def feed(eng: Engine, values: np.ndarray, start: int) -> None:
    for i, v in enumerate(values, start):
        eng.accept([Reading(KEY, T0 + i * S, float(v))])
        eng.tick(T0 + i * S)


def state(eng: Engine) -> np.ndarray:
    st = eng._streams[KEY.id]
    return np.array(st.lane.table.state[st.row])


@settings(max_examples=12, deadline=None)
@given(a=st.floats(15, 400), b=st.floats(15, 400), sign=st.sampled_from([-1.0, 1.0]))
def test_a_flagged_reading_never_moves_the_state(tmp_path_factory, a: float, b: float, sign: float) -> None:  # type: ignore[no-untyped-def]
    history = clean(N + 10)
    runs = []
    for off in (a, b):
        eng, alerts = engine(tmp_path_factory.mktemp("e"))
        feed(eng, history[:N], 0)
        before = state(eng)
        feed(eng, np.array([history[N] + sign * off]), N)
        fired = [x for x in alerts if x.state == "firing" and x.check == "anomaly"]
        assert fired and fired[-1].ts_ns == T0 + N * S  # flagged on the reading itself
        status = eng.stream(KEY.id)
        assert status is not None and status.kept_out == 1  # the status says so
        runs.append((before, state(eng), eng))
    (b0, s_a, ea), (_, s_b, eb) = runs
    assert not np.array_equal(b0, s_a)  # the step happened (fed the forecast, not the reading)
    assert np.array_equal(s_a, s_b)  # the same state whatever the anomalous value
    feed(ea, history[N + 1 :], N + 1)
    feed(eb, history[N + 1 :], N + 1)
    fa, fb = ea.forecast(KEY.id), eb.forecast(KEY.id)
    assert fa is not None and fb is not None and fa.mean == fb.mean


@settings(max_examples=6, deadline=None)
@given(shift=st.floats(25, 80), k=st.integers(4, 20))
def test_after_accept_after_steps_of_a_shift_the_state_follows(tmp_path_factory, shift: float, k: int) -> None:  # type: ignore[no-untyped-def]
    eng, alerts = engine(tmp_path_factory.mktemp("e"), accept_after_steps=k)
    history = clean(N + k + 20)
    history[N:] += shift
    feed(eng, history[:N + k - 1], 0)
    s = eng.stream(KEY.id)
    assert s is not None and s.expected is not None and abs(s.expected - (history[N + k - 2] - shift)) < shift / 3
    feed(eng, history[N + k - 1 : N + k + 5], N + k - 1)
    ended = [x for x in alerts if x.state == "resolved" and x.check == "anomaly"]
    assert ended and ended[0].extra.get("reason") == "new_level" and ended[0].kind == "level_shift"
    assert ended[0].ts_ns == T0 + (N + k - 1) * S  # on the k-th reading of the shift
    s = eng.stream(KEY.id)
    assert s is not None and s.expected is not None and abs(s.expected - history[N + k + 4]) < shift / 4
    assert s.kept_out == 0  # the new level is followed
    assert [x.state for x in alerts if x.check == "anomaly"] == ["firing", "resolved"]  # no new alert at the new level
