"""The sequence form against a call per step (part of ``sensorcast bench inference``).

- ``predict``: ``POST /v1/predict``'s work (service/streams/predict.py, no HTTP) over a
  2,000-step history, median of 5 calls: one call of the sequence graph vs a call of the
  step graph per history step (the path before the sequence form).
- ``warm-up``: 10k streams x 150 steps of history run through the model from a fresh
  state in batches of the engine's call size: ``runtime.sequence`` vs ``runtime.step``
  per step (the model's part of warm-up).
- ``engine warm-up`` (models with a warm-up of 20+ steps): the same streams warmed from a
  memory store through the whole engine, every stage, in one tick: with the steps of
  warming rows run through the sequence form (service/streams/table.py) and with a step
  call per bucket; CPU of the tick and of the model calls in it.

Both for the benchmark's kit model and, when given, the shipped demo model. CPU time of
this thread, like the rest of the benchmark.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from service.arrays import F32
from service.runtime.registry import LoadedModel, ModelRegistry
from service.runtime.session import ModelRuntime, roll
from service.streams.predict import predict

_clock = time.thread_time


def _median(fn: Callable[[], object], reps: int) -> float:
    fn()  # first call: ORT allocates its buffers
    times = []
    for _ in range(reps):
        t0 = _clock()
        fn()
        times.append(_clock() - t0)
    return float(np.median(times))


class _Rolled:
    """The model with ``sequence`` done as a call per step (the path before the sequence form)."""

    def __init__(self, rt: ModelRuntime) -> None:
        self.manifest = rt.manifest
        self._rt = rt

    def step(self, x: F32, state: F32, tf: F32 | None) -> tuple[F32, F32 | None, F32]:
        return self._rt.step(x, state, tf)

    def window(self, x: F32, tf: F32 | None) -> tuple[F32, F32 | None]:
        return self._rt.window(x, tf)

    def sequence(self, x: F32, state: F32, tf: F32 | None) -> tuple[F32, F32 | None, F32]:
        return roll(self._rt, x, state, tf)


class _OneModel:
    """A registry stand-in serving one model (predict() asks a registry)."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        return self.loaded


def _predict_ms(loaded: LoadedModel, steps: int, reps: int) -> float:
    m = loaded.manifest
    rng = np.random.default_rng(3)
    values = [[float(v) for v in row] for row in rng.standard_normal((steps, len(m.features)))]
    c = round(m.cadence_s * 1e9)
    ts = [1_700_000_000_000_000_000 // c * c + i * c for i in range(steps)]
    reg = _OneModel(loaded)
    return _median(lambda: predict(reg, m.name, m.version, values, ts), reps) * 1e3  # type: ignore[arg-type]


def warmup_s(rt: ModelRuntime | _Rolled, streams: int, steps: int, chunk: int) -> float:
    m = rt.manifest
    x = np.random.default_rng(4).standard_normal((chunk, steps, len(m.features))).astype(np.float32)  # (b, T, F)
    x[:, ::7] = np.nan  # some missing values
    k = len(m.time_features)
    tf = np.zeros((chunk, steps, k), np.float32) if k else None
    state = np.zeros((chunk, m.state_size), np.float32)
    calls = -(-streams // chunk)

    def run() -> None:
        for _ in range(calls):
            rt.sequence(x, state, tf)

    return _median(run, 1) * streams / (calls * chunk)


def predict_pair(loaded: LoadedModel, steps: int, reps: int = 5) -> tuple[float, float]:
    """(ms with the sequence form, ms with a call per step) for a ``steps``-step predict."""
    rolled = LoadedModel(loaded.name, loaded.version, loaded.folder, loaded.manifest,
                         _Rolled(loaded.runtime), loaded.fingerprint)
    return _predict_ms(loaded, steps, reps), _predict_ms(rolled, steps, reps)


def engine_warmup(registry: ModelRegistry, name: str, streams: int, sequence: bool) -> tuple[float, float, int] | None:
    """Warm-up through the whole engine: ``streams`` new streams whose history (the model's
    warm-up + 2 steps, one reading per bucket) is in a memory store; one live reading each,
    then the tick that reads and steps the history through every stage. Returns (CPU s of
    the tick, CPU s inside the model calls, stream-steps), or None when the streams do not
    bind to ``name``. ``sequence=False``: the runtime's sequence form is hidden, so every
    bucket is a step call (the path before warm-up used it)."""
    import tempfile

    from service.config import Settings
    from service.metrics import Metrics
    from service.records import NS_PER_S, Reading, StreamKey
    from service.store.memory import MemoryStore
    from service.streams.engine import Engine

    loaded = registry.get(name)
    m, rt = loaded.manifest, loaded.runtime
    n = m.warmup_steps + 2
    c = round(m.cadence_s * NS_PER_S)
    t0 = 1_700_000_000 * NS_PER_S // c * c
    keys = [StreamKey(f"dev{i:06d}", m.features[0]) for i in range(streams)]
    vals = np.random.default_rng(5).standard_normal((streams, n))
    store = MemoryStore()
    for i, k in enumerate(keys):
        store.points[k] = {t0 + j * c: float(v) for j, v in enumerate(vals[i])}
    spent = [0.0]
    step, seq, form = rt.step, rt.sequence, getattr(rt, "sequence_form", "none")

    def timed(fn: Callable[..., tuple[F32, F32 | None, F32]]) -> Callable[..., tuple[F32, F32 | None, F32]]:
        def call(*a: object) -> tuple[F32, F32 | None, F32]:
            t = _clock()
            try:
                return fn(*a)
            finally:
                spent[0] += _clock() - t
        return call

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.model_validate({"models": {"dir": str(registry.dir), "watch": False},
                                            "streams": {"checkpoint_dir": tmp, "warmup_wait_s": 600.0}})
        eng = Engine(settings, registry, store, Metrics())
        # Instance attributes over the runtime's methods, taken off again below.
        rt.__dict__.update(step=timed(step), sequence=timed(seq), sequence_form=form if sequence else "none")
        try:
            now = t0 + n * c
            eng.accept([Reading(k, now, 0.0) for k in keys])
            t = _clock()
            done = eng.tick(now + 1)
            cpu = _clock() - t
            st = eng.stream(keys[0].id)
        finally:
            del rt.__dict__["step"], rt.__dict__["sequence"]
            if form != "none":
                rt.__dict__["sequence_form"] = form
            eng.close()
    if st is None or st.model != name:
        return None
    return cpu, spent[0], done


def run(registry: ModelRegistry, names: list[str], chunk: int, streams: int = 10_000, steps: int = 150,
        predict_steps: int = 2_000) -> None:
    print(f"sequence form: predict over {predict_steps:,} steps (median of 5 calls) and warm-up of "
          f"{streams:,} streams x {steps} steps (batches of {chunk}), one call vs a call per step")
    print(f"{'model':>10} {'form':>9} {'predict seq ms':>15} {'predict step ms':>16} "
          f"{'warm-up seq s':>14} {'warm-up step s':>15}")
    for name in names:
        loaded = registry.get(name)
        rt = loaded.runtime
        source = getattr(rt, "sequence_form", "?")  # native (one RNN op) | scan | none
        p_seq, p_step = predict_pair(loaded, predict_steps)
        w_seq, w_step = warmup_s(rt, streams, steps, chunk), warmup_s(_Rolled(rt), streams, steps, chunk)
        print(f"{name:>10} {source:>9} {p_seq:>15.1f} {p_step:>16.1f} {w_seq:>14.2f} {w_step:>15.2f}")
    for name in names:  # the whole engine, for models whose warm-up is long enough to wait
        if registry.get(name).manifest.warmup_steps < 20:
            continue
        for sequence in (True, False):
            got = engine_warmup(registry, name, streams, sequence)
            if got is None:
                print(f"{name:>10}: engine warm-up skipped (its streams bind to another model)")
                break
            cpu, model, done = got
            how = "waiting steps in one sequence call" if sequence else "a step call per bucket"
            print(f"{name:>10} engine warm-up of {streams:,} streams ({done:,} stream-steps, every stage), {how}: "
                  f"{cpu:.2f} s CPU, of which model calls {model:.2f} s")


def demo_registry(models: Path) -> tuple[ModelRegistry, list[str]] | None:
    """The shipped models' registry (``--sequence-models``), or None when absent."""
    if not models.is_dir():
        return None
    reg = ModelRegistry(models)
    names = [n for n in reg.names() if reg.get(n).manifest.kind == "step"]
    return (reg, names) if names else None
