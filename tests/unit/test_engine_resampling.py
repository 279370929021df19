"""The engine's vectorised fast path and its per-stream slow path feed exactly what the
reference ``Resampler`` feeds, for any interleaving of readings, ticks and clocks, for
univariate and multivariate (device) streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.metrics import Metrics
from service.records import Reading, StreamKey
from service.runtime.manifest import Manifest
from service.runtime.registry import ModelRegistry
from service.runtime.session import FunctionRuntime
from service.streams.engine import Engine
from service.streams.resample import Resampler
from tests.modelkit import KitSpec, settings_for, write_model

C = 10 * 10**9  # cadence 10 s
GRACE_S = 3.0
TAPE = 32  # the fake model's state is a tape of the last inputs (F values per step)
MISSING = -7.0  # NaN inputs are written to the tape as this (a NaN state would be reset)


def tape_step(x: np.ndarray, state: np.ndarray, tf: np.ndarray | None) -> tuple[np.ndarray, None, np.ndarray]:
    f = x.shape[1]
    new = np.concatenate([state[:, f:], np.nan_to_num(x, nan=MISSING)], axis=1)  # (B, S): shift, append x
    return np.repeat(x[:, None, :], 2, axis=1), None, new  # forecast (B, H=2, F)


def factory(folder: Path, manifest: Manifest) -> FunctionRuntime:
    return FunctionRuntime(manifest, step=tape_step)


readings_st = st.lists(
    st.tuples(
        st.integers(0, 2),  # stream
        st.integers(0, 1),  # feature (multivariate)
        st.sampled_from([1, 1, 1, 1, 0, 0, 2, 3, -1, -3, 20]),  # bucket step from this stream's previous reading
        st.sampled_from([0, 0, -1, -3 * 10**9, -C + 1]),  # offset inside the bucket
        st.booleans(),  # start a new tick before this reading
        st.sampled_from([0, 0, 1, 2, 10**9, 4 * 10**9, 2 * C, 40 * C]),  # clock advance at a new tick (ns);
        # 40 cadences: the streams fall behind the clock and catch up (a backlog)
    ),
    min_size=1,
    max_size=60,
)


@given(readings=readings_st, tol=st.integers(0, 2), max_gap=st.integers(0, 4), n_feat=st.sampled_from([1, 2]))
@example(readings=[(0, 0, 1, 0, True, 0)] * 4, tol=0, max_gap=2, n_feat=1)  # in order: the fast path
@example(readings=[(0, 0, 1, 0, True, 0), (0, 1, 0, 0, False, 0)] * 4, tol=0, max_gap=2, n_feat=2)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_engine_feeds_what_the_resampler_feeds(
    tmp_path: Path, readings: list, tol: int, max_gap: int, n_feat: int
) -> None:
    models = tmp_path / f"models{n_feat}"
    features = ("value",) if n_feat == 1 else ("a", "b")
    if not models.exists():
        write_model(models, KitSpec(name="tape", hidden=TAPE, horizon=2, cadence_s=10, warmup_steps=0,
                                    probabilistic=False, features=features))
    s = settings_for(tmp_path, models, streams={"late_tolerance_steps": tol, "max_gap_steps": max_gap,
                                                "close_grace_s": GRACE_S})
    eng = Engine(s, ModelRegistry(models, factory=factory), None, Metrics())
    refs = [Resampler(C, n_feat, tol, max_gap, round(GRACE_S * 1e9)) for _ in range(3)]
    tapes: list[list[float]] = [[] for _ in range(3)]
    clock = 0
    last = [5, 5, 5]
    batch: list[tuple[int, int, int, float]] = []

    def tick() -> None:
        eng.accept([Reading(StreamKey(f"d{i}", features[f]), ts, v) for i, f, ts, v in batch])
        for i, f, ts, v in batch:
            refs[i].add(ts, f, v)
        batch.clear()
        eng.tick(clock)
        for i in range(3):
            for step in refs[i].ready(clock):
                if step.reset:
                    tapes[i].clear()
                tapes[i].extend(step.values)

    for n, (i, f, delta, offset, new_tick, advance) in enumerate(readings):
        f %= n_feat
        bucket = last[i] = max(0, last[i] + delta)
        ts = 10**12 + bucket * C + offset
        if new_tick and batch:
            tick()
            clock += advance
        clock = max(clock, ts)  # readings never come from the future
        batch.append((i, f, ts, float(n + 1)))
    tick()
    for i in range(3):
        sid = f"d{i}/value" if n_feat == 1 else f"d{i}"
        status = eng.stream(sid)
        if not tapes[i]:
            assert status is None or status.warm_have == 0
            continue
        assert status is not None
        table = eng._lanes["tape@1"].table
        row = eng._streams[sid].row
        got = table.state[row, -min(TAPE, len(tapes[i])) :].tolist()
        want = [MISSING if w != w else float(np.float32(w)) for w in tapes[i][-TAPE:]]
        assert got == want
        assert int(table.warm_have[row]) == len(tapes[i]) // n_feat
