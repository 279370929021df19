"""``sensorcast bench inference``: cost per stream-step of the live path, and its floor.

For 1k / 10k / 100k univariate streams on one 2x64 GRU step model (built with the
modelkit, plain-MatMul GRU, horizon 12), it prints microseconds per stream-step for

- ``full``: ``Engine.accept`` + ``Engine.tick`` (route, resample, one batched ONNX step,
  score, decide), one reading per stream per tick, after warm-up (CPU time of the calling thread, median over ticks);
- ``onnx``: the bare ``session.run`` on the same batch (the floor);
- ``recompute``: the same model's 96-step window graph (the step graph unrolled) run for
  the same streams, i.e. what a stateless service pays for the same forecast;

and the process RSS once the largest stream count is loaded; then the sequence form
against a call per step (``tools/bench/sequence.py``: a 2,000-step predict, warm-up of
10k streams x 150 steps). Requires ``onnx`` (the
``train`` extra) to build the model. One ORT thread unless ``--threads``.
"""

from __future__ import annotations

import argparse
import gc
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from service.config import Settings
from service.metrics import Metrics
from service.records import NS_PER_S, Reading, StreamKey
from service.runtime.registry import ModelRegistry
from service.streams.engine import Engine

CADENCE_S = 60.0
# CPU time of this thread, not wall time: the numbers stay meaningful on a shared, busy
# machine (ORT runs in the calling thread: 1 intra-op thread, sequential, no spinning).
_clock = time.thread_time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", default="1000,10000,100000", help="Comma-separated stream counts.")
    p.add_argument("--ticks", type=int, default=20, help="Measured ticks per stream count.")
    p.add_argument("--window", type=int, default=96, help="Window length for the recompute comparison.")
    p.add_argument("--recompute-batch", type=int, default=512,
                   help="Streams per recompute call (the engine's own call size; cost reported per stream).")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads.")
    p.add_argument("--scorer", choices=("evidence", "spread", "surprise"), default="evidence",
                   help="anomaly.scorer of the engine (evidence: the default).")
    p.add_argument("--sequence-models", default="models",
                   help="Models directory whose step models are also timed in the sequence-form table (skipped when "
                        "absent; the shipped demo model by default).")
    p.add_argument("--no-sequence", action="store_true", help="Skip the sequence-form table (predict, warm-up).")
    p.add_argument("--one-call", action="store_true",
                   help="Also time one ORT call over all streams (<= 10k; grows ORT's arena, inflating RSS).")


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def _build(models: Path, kind: str, window: int) -> None:
    from tools.modelkit import KitSpec, write_model

    common = {"layers": 2, "hidden": 64, "horizon": 12, "cadence_s": CADENCE_S, "warmup_steps": 4, "seed": 7}
    name = "gru" if kind == "step" else "gruwin"
    write_model(models, KitSpec(name=name, kind=kind, window=window, **common))  # type: ignore[arg-type]


def _readings(keys: list[StreamKey], step: int, phase: np.ndarray) -> tuple[int, list[Reading]]:
    c = round(CADENCE_S * NS_PER_S)
    ts = (1_700_000_000 // 60 + step) * c
    vals = (np.sin(step / 7.0 + phase) * 2.0).tolist()
    return ts, [Reading(k, ts, v) for k, v in zip(keys, vals, strict=True)]


def bench_full(settings: Settings, registry: ModelRegistry, n: int, ticks: int) -> tuple[float, float, int]:
    """(us per stream-step, RSS MB after, alerts) for n streams."""
    eng = Engine(settings, registry, None, Metrics())
    keys = [StreamKey(f"dev{i:06d}", "value") for i in range(n)]
    phase = np.random.default_rng(0).uniform(0, 6.28, n)
    for step in range(8):  # warm-up: bind streams, 4 warm-up steps, scorer baselines
        ts, rs = _readings(keys, step, phase)
        eng.accept(rs)
        eng.tick(ts)
    per_tick: list[float] = []
    steps = 0
    for step in range(8, 8 + ticks):
        ts, rs = _readings(keys, step, phase)
        t0 = _clock()
        eng.accept(rs)
        steps += eng.tick(ts)
        per_tick.append(_clock() - t0)
    assert steps == n * ticks, f"expected {n * ticks} stream-steps, did {steps}"
    status = eng.stream(keys[0].id)
    assert status is not None and status.status != "warming"
    alerts = len(eng.recent_alerts(limit=10**9))
    rss = rss_mb()
    del eng
    gc.collect()
    return float(np.median(per_tick)) / n * 1e6, rss, alerts


def bench_onnx(registry: ModelRegistry, n: int, ticks: int, chunk: int) -> float:
    """Bare runtime.step over n streams in calls of ``chunk`` rows (as the engine does)."""
    rt = registry.get("gru").runtime
    s = registry.get("gru").manifest.state_size
    x = np.random.default_rng(1).standard_normal((n, 1)).astype(np.float32)  # (B, 1)
    state = np.zeros((n, s), np.float32)  # (B, S)
    rt.step(x[:chunk], state[:chunk], None)
    per_tick = []
    for _ in range(ticks):
        t0 = _clock()
        for lo in range(0, n, chunk):
            _, _, state[lo : lo + chunk] = rt.step(x[lo : lo + chunk], state[lo : lo + chunk], None)
        per_tick.append(_clock() - t0)
    return float(np.median(per_tick)) / n * 1e6


def bench_recompute(registry: ModelRegistry, batch: int, window: int, reps: int = 3) -> float:
    rt = registry.get("gruwin").runtime
    x = np.random.default_rng(2).standard_normal((batch, window, 1)).astype(np.float32)  # (B, L, 1)
    rt.window(x, None)
    per_call = []
    for _ in range(reps):
        t0 = _clock()
        rt.window(x, None)
        per_call.append(_clock() - t0)
    return float(np.median(per_call)) / batch * 1e6


def run(args: argparse.Namespace) -> int:
    from service.streams.table import MAX_CALL_BATCH

    counts = sorted(int(c) for c in args.streams.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        t0 = _clock()
        _build(models, "step", args.window)
        settings = Settings.model_validate({
            "models": {"dir": str(models), "threads": args.threads, "watch": False},
            "streams": {"checkpoint_dir": str(Path(tmp) / "state")},
            "anomaly": {"scorer": args.scorer},
        })
        registry = ModelRegistry(models, threads=args.threads)
        print(f"model: 2x64 GRU step (MatMul form), horizon 12, built+loaded in {_clock() - t0:.1f} CPU s; "
              f"ORT threads {args.threads}; engine calls ORT with <= {MAX_CALL_BATCH} rows")
        print(f"RSS before any stream: {rss_mb():.0f} MB")
        results = []
        for n in counts:
            onnx_us = bench_onnx(registry, n, args.ticks, MAX_CALL_BATCH)
            onnx_one = bench_onnx(registry, n, args.ticks, n) if n <= 10_000 and args.one_call else math.nan
            full_us, rss, alerts = bench_full(settings, registry, n, args.ticks)
            results.append((n, full_us, onnx_us, onnx_one, rss, alerts))
        # The window model is loaded only now so that its session does not count in the RSS.
        win_dir = Path(tmp) / "win"
        _build(win_dir, "window", args.window)
        rec = bench_recompute(ModelRegistry(win_dir, threads=args.threads), args.recompute_batch, args.window)
        print(f"{'streams':>8} {'full us/step':>13} {'onnx us/step':>13} {'onnx 1 call':>12} "
              f"{'recompute us':>13} {'recompute/full':>15} {'RSS MB':>8} {'alerts':>7}")
        for n, full_us, onnx_us, onnx_one, rss, alerts in results:
            print(f"{n:>8} {full_us:>13.2f} {onnx_us:>13.2f} {onnx_one:>12.2f} {rec:>13.1f} "
                  f"{rec / full_us:>15.1f} {rss:>8.0f} {alerts:>7}")
        print(f"full = accept + tick per stream-step (route, resample, ORT step, score, decide); "
              f"onnx = bare session.run in chunks of {MAX_CALL_BATCH} ('1 call': all rows at once); "
              f"recompute = {args.window}-step window graph per stream at B={args.recompute_batch}; "
              f"RSS = whole process after that stream count (VmRSS). Times are CPU time of the benchmark "
              f"thread (time.thread_time), medians over ticks.")
        if not args.no_sequence:
            from tools.bench import sequence

            sequence.run(registry, ["gru"], MAX_CALL_BATCH)
            shipped = sequence.demo_registry(Path(args.sequence_models))
            if shipped is not None:
                sequence.run(shipped[0], shipped[1], MAX_CALL_BATCH)
    return 0
