"""The engine's vectorised fast path and its per-stream slow path feed exactly what the
reference ``Resampler`` feeds, for any interleaving of readings, ticks and clocks."""

from __future__ import annotations

import math
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
TAPE = 32  # the fake model's state is a tape of the last 32 inputs


def tape_step(x: np.ndarray, state: np.ndarray, tf: np.ndarray | None) -> tuple[np.ndarray, None, np.ndarray]:
    new = np.concatenate([state[:, 1:], x[:, :1]], axis=1)  # (B, S): shift left, append x
    return np.repeat(x[:, None, :1], 2, axis=1), None, new  # forecast (B, H=2, 1)


def factory(folder: Path, manifest: Manifest) -> FunctionRuntime:
    return FunctionRuntime(manifest, step=tape_step)


readings_st = st.lists(
    st.tuples(
        st.integers(0, 2),  # stream
        st.sampled_from([1, 1, 1, 1, 0, 2, 3, -1, -3, 20]),  # bucket step from this stream's previous reading
        st.sampled_from([0, -1, -3 * 10**9, -C + 1]),  # offset inside the bucket
        st.booleans(),  # start a new tick before this reading
        st.integers(0, 3),  # clock advance at a new tick, in buckets
    ),
    min_size=1,
    max_size=60,
)


@given(readings=readings_st, tol=st.integers(0, 2), max_gap=st.integers(0, 4))
@example(readings=[(0, 1, 0, True, 0)] * 4, tol=0, max_gap=2)  # in order, one per tick: the fast path
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_engine_feeds_what_the_resampler_feeds(tmp_path: Path, readings: list, tol: int, max_gap: int) -> None:
    models = tmp_path / "models"
    if not models.exists():
        write_model(models, KitSpec(name="tape", hidden=TAPE, horizon=2, cadence_s=10, warmup_steps=0,
                                    probabilistic=False))
    s = settings_for(tmp_path, models, streams={"late_tolerance_steps": tol, "max_gap_steps": max_gap})
    eng = Engine(s, ModelRegistry(models, factory=factory), None, Metrics())
    refs = [Resampler(C, 1, tol, max_gap) for _ in range(3)]
    tapes: list[list[float]] = [[] for _ in range(3)]
    clock = 0
    last = [5, 5, 5]
    batch: list[tuple[int, int, float]] = []

    def tick() -> None:
        eng.accept([Reading(StreamKey(f"d{i}", "value"), ts, v) for i, ts, v in batch])
        for i, ts, v in batch:
            refs[i].add(ts, 0, v)
        batch.clear()
        eng.tick(clock)
        for i in range(3):
            for step in refs[i].ready(clock):
                if step.reset:
                    tapes[i].clear()
                tapes[i].append(step.values[0])

    for n, (i, delta, offset, new_tick, advance) in enumerate(readings):
        bucket = last[i] = max(0, last[i] + delta)
        ts = 10**12 + bucket * C + offset
        if new_tick and batch:
            tick()
            clock += advance * C
        clock = max(clock, 10**12 + bucket * C + offset)  # readings never come from the future
        batch.append((i, ts, float(n + 1)))
    tick()
    for i in range(3):
        status = eng.stream(f"d{i}/value")
        if not tapes[i]:
            assert status is None or status.warm_have == 0
            continue
        assert status is not None
        table = eng._tables["tape@1"]
        row = eng._streams[f"d{i}/value"].row
        got = table.state[row, -min(TAPE, len(tapes[i])) :].tolist()
        want = tapes[i][-TAPE:]
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert (math.isnan(g) and math.isnan(w)) or g == np.float32(w)
        assert status.warm_have == min(len(tapes[i]), status.warm_need) and int(table.warm_have[row]) == len(tapes[i])
