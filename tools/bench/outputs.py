"""What ``store.write_outputs`` costs: ``python -m tools.bench.outputs [--streams 10000]``.

On the inference bench's model and load (one reading per stream per tick), with the
startup objects frozen as serve's GC policy does:

- engine thread: CPU per stream-step of ``Engine.accept`` + ``tick`` without outputs, and
  with every step's forecast queued (``store.outputs_interval_s=0``: the engine builds a
  ``Forecast`` per stream-step for the sink);
- writer thread, sampling (the default): CPU to read every stream's score and forecast and
  write them to a real influxd (started here, Debian's ``influxd``) once; per interval of
  ``outputs_interval_s`` that is the whole cost, none of it on the engine's thread.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import numpy as np

from service.config import Settings, StoreSettings
from service.metrics import Metrics
from service.records import StreamKey
from service.runtime.registry import ModelRegistry
from service.store import open_store
from service.store.outputs import LineWriter, StoreOutputs, line_writer
from service.streams.engine import Engine
from tools.bench.inference import _build, _readings
from tools.localservers import start_influxd

_clock = time.thread_time


def warm_engine(settings: Settings, registry: ModelRegistry, n: int, out: StoreOutputs | None) -> tuple[Engine, list[StreamKey], np.ndarray]:
    eng = Engine(settings, registry, None, Metrics(), on_forecast=None if out is None else out.on_forecast)
    eng.publish_forecasts = out is not None
    keys = [StreamKey(f"dev{i:06d}", "value") for i in range(n)]
    phase = np.random.default_rng(0).uniform(0, 6.28, n)
    for step in range(8):
        ts, rs = _readings(keys, step, phase)
        eng.accept(rs)
        eng.tick(ts)
    return eng, keys, phase


def engine_cost(settings: Settings, registry: ModelRegistry, n: int, ticks: int, out: StoreOutputs | None) -> float:
    """Median engine-thread CPU (us) per stream-step."""
    eng, keys, phase = warm_engine(settings, registry, n, out)
    gc.collect()
    gc.freeze()  # as serve's GcPolicy does once started
    per_tick = []
    for step in range(8, 8 + ticks):
        ts, rs = _readings(keys, step, phase)
        t0 = _clock()
        eng.accept(rs)
        eng.tick(ts)
        per_tick.append(_clock() - t0)
        if out is not None:
            out.flush()  # the writer's thread would; not timed here
    gc.unfreeze()
    return float(np.median(per_tick)) / n * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--streams", type=int, default=10_000)
    p.add_argument("--ticks", type=int, default=10)
    args = p.parse_args()
    n = args.streams
    with tempfile.TemporaryDirectory() as tmp, start_influxd() as influxd:
        models = Path(tmp) / "models"
        _build(models, "step", 96)
        base = Settings(store=StoreSettings(url=f"influxdb://127.0.0.1:{influxd.port}/bench"))
        registry = ModelRegistry(models, 1, Metrics())
        store = open_store(base.store)
        writer: LineWriter = line_writer(store)

        def outputs(interval_s: float, engine: Engine | None = None) -> StoreOutputs:
            s = base.model_copy(update={"store": base.store.model_copy(
                update={"outputs_interval_s": interval_s, "outputs_queue_max": 10 * n})})
            return StoreOutputs(writer, s, Metrics(), engine)

        off = engine_cost(base, registry, n, args.ticks, None)
        every = engine_cost(base, registry, n, args.ticks, outputs(0.0))
        print(f"engine thread, {n} streams: {off:.2f} us/stream-step without outputs, {every:.2f} with every "
              f"step's forecast written (outputs_interval_s=0: +{every - off:.2f})")

        eng, _, _ = warm_engine(base, registry, n, None)
        out = outputs(10.0, eng)
        t0, w0 = _clock(), time.perf_counter()
        out.flush()
        cpu, wall = _clock() - t0, time.perf_counter() - w0
        m = out._metrics.outputs_written
        points = m.labels("forecasts")._value.get() + m.labels("scores")._value.get()
        assert points == 2 * n, points
        print(f"writer thread, sampling (default): {n} scores + {n} forecasts read and written to influxd in "
              f"{wall:.2f} s, {cpu * 1e3:.0f} ms CPU ({cpu / n * 1e6:.1f} us per stream per sample; every 10 s: "
              f"{cpu / 10 * 100:.1f}% of a core), 0 on the engine's thread")
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
