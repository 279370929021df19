"""``sensorcast bench faults`` (``make bench-faults``): simulated faults through the live engine.

Streams from the simulator (tools/sim/signals.py, the demo preset: 1 s cadence, a signal
day every 288 steps) run through a real ``Engine`` with a simulated clock, as the
backtest drives it: every step, each stream's reading is accepted (a silent stream sends
none) and ``tick(now=step time)`` runs, so the silent watchdog sees time pass too.

Faulty streams carry one fault kind each at one of several magnitudes, placed at known
steps with quiet time between events (longer than the alert cooldown); clean streams run
alongside for the false-alert rate. Every stream gets physical limits (its quantity's)
and operating limits (``StreamSignal.operating_limits``) through its binding's rules.
Scoring is in faultmetrics.py. Prints a table and one JSON line; ``--out`` writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from service.config import ModelBinding, Settings
from service.metrics import Metrics
from service.records import NS_PER_S, Alert, Reading, StreamKey
from service.runtime.registry import ModelRegistry
from service.streams.engine import Engine
from tools.bench import faultmetrics as fm
from tools.sim.signals import (
    ANOMALY_KINDS,
    DEMO_COMPRESSION,
    QUANTITIES,
    Scheduled,
    StreamSignal,
    StreamSpec,
)

START_NS = 1_767_225_600 * NS_PER_S  # 2026-01-01T00:00:00Z, a whole number of cadences

# Per kind: magnitudes (noise sigmas; steps of duration for stuck and silent, which have
# no size) and the (min, max) duration in steps. Degradations are slow ramps.
LEVELS: dict[str, tuple[float, ...]] = {
    "spike": (6.0, 10.0, 15.0), "level_shift": (4.0, 7.0, 10.0), "stuck": (60.0, 120.0, 240.0),
    "variance_burst": (3.0, 5.0, 8.0), "drift": (6.0, 10.0, 14.0), "silent": (45.0, 90.0, 180.0),
    "out_of_range": (1.0, 3.0, 10.0), "degradation": (2.0, 4.0, 8.0),
}
DURATION: dict[str, tuple[int, int]] = {
    "spike": (1, 3), "level_shift": (60, 120), "variance_burst": (60, 120), "drift": (120, 240),
    "out_of_range": (1, 30), "degradation": (300, 600),
}
QUIET = (400, 500)  # steps between events: longer than the default 300 s cooldown at 1 s cadence


@dataclass(frozen=True, slots=True)
class BenchConfig:
    model: str = "demo"
    version: str | None = None
    models_dir: Path = Path("models")
    streams_per_level: int = 4  # faulty streams per (kind, magnitude)
    # 300 clean streams x 4 h: ~1,200 stream-hours, enough to tell 1 false alert per 1,000 from 0.
    clean: int = 300
    steps: int = 14_400  # per stream (1 s cadence: 4 hours)
    warmup: int = 300  # steps not scored for false alerts (the model warms up first)
    slack: int = 0  # steps after an event's end in which an alert still counts for it (faultmetrics.py)
    seed: int = 11
    kinds: tuple[str, ...] = tuple(LEVELS)


@dataclass
class StreamPlan:
    spec: StreamSpec
    signal: StreamSignal
    clean: bool
    level: float = 0.0  # the kind's magnitude (see LEVELS)
    events: list[fm.FaultEvent] = field(default_factory=list)


def plan_streams(cfg: BenchConfig) -> list[StreamPlan]:
    """Faulty streams (each kind x magnitude x ``streams_per_level``) and clean streams."""
    quantities = sorted(QUANTITIES)
    plans: list[StreamPlan] = []
    n = 0
    for kind in cfg.kinds:
        for level in LEVELS[kind]:
            for k in range(cfg.streams_per_level):
                rng = np.random.default_rng([cfg.seed, n])
                spec = _spec(f"f-{kind}-{level:g}-{k}", quantities[n % len(quantities)])
                spec = replace(spec, scheduled=_schedule(kind, level, cfg, rng))
                plans.append(StreamPlan(spec, StreamSignal(spec, START_NS, cfg.seed + n), False, level))
                n += 1
    for k in range(cfg.clean):
        spec = _spec(f"clean-{k:03d}", quantities[n % len(quantities)])
        plans.append(StreamPlan(spec, StreamSignal(spec, START_NS, cfg.seed + n), True))
        n += 1
    for p in plans:
        p.events = [
            fm.FaultEvent(p.spec.stream_id, e.kind, e.start, e.end,
                          p.level if e.kind in ("stuck", "silent") else abs(e.magnitude), e.crossing)
            for e in p.signal.events(0, cfg.steps)
        ]
    return plans


def _spec(device: str, quantity: str) -> StreamSpec:
    return StreamSpec(device, QUANTITIES[quantity], cadence_s=1.0, compression=DEMO_COMPRESSION, anomalies_per_1k=0.0)


def _schedule(kind: str, level: float, cfg: BenchConfig, rng: np.random.Generator) -> tuple[Scheduled, ...]:
    out: list[Scheduled] = []
    step = cfg.warmup + int(rng.integers(0, 100))
    while True:
        if kind in ("stuck", "silent"):
            duration, magnitude = int(level), 0.0
        else:
            lo, hi = DURATION[kind]
            duration = int(rng.integers(lo, hi + 1))
            magnitude = level if kind == "variance_burst" or rng.random() < 0.5 else -level
        if step + duration + cfg.slack + fm.AFTER_END >= cfg.steps:
            return tuple(out)
        out.append(Scheduled(step, kind, duration, magnitude))
        step += duration + int(rng.integers(*QUIET))


def stream_rules(plan: StreamPlan) -> dict[str, float]:
    """Physical (min, max) and operating (lower, upper) limits of one stream."""
    q = plan.spec.quantity
    lower, upper = plan.signal.operating_limits()
    rules = {"min": q.lower, "max": q.upper, "lower": lower, "upper": upper}
    return {k: v for k, v in rules.items() if v is not None}


def bindings(cfg: BenchConfig, plans: Sequence[StreamPlan]) -> tuple[list[ModelBinding], bool]:
    """One binding per stream carrying its rules; False when bindings cannot carry rules
    yet (the limits are then not applied: out_of_range and predicted_breach cannot fire)."""
    carries = "rules" in ModelBinding.model_fields
    out = []
    for p in plans:
        fields: dict[str, Any] = {"model": cfg.model, "version": cfg.version,
                                  "device": p.spec.device, "quantity": p.spec.quantity.name}
        if carries:
            fields["rules"] = stream_rules(p)
        out.append(ModelBinding.model_validate(fields))
    return out, carries


def run_engine(cfg: BenchConfig, plans: Sequence[StreamPlan]) -> tuple[list[fm.AlertMark], bool]:
    """Every step of every stream through one engine; the alerts as marks on the grid."""
    registry = ModelRegistry(cfg.models_dir)
    base = Settings(_env_file=None)
    binds, carries = bindings(cfg, plans)
    settings = base.model_copy(update={"models": base.models.model_copy(update={
        "dir": cfg.models_dir, "bindings": binds, "watch": False})})
    marks: list[fm.AlertMark] = []
    cadence_ns = NS_PER_S

    def on_alert(a: Alert) -> None:
        marks.append(fm.AlertMark(a.stream_id, (a.ts_ns - START_NS) // cadence_ns, a.state,
                                  getattr(a, "check", "anomaly"), getattr(a, "kind", "")))

    engine = Engine(settings, registry, None, Metrics(), on_alert=on_alert)
    keys = [StreamKey(p.spec.device, p.spec.quantity.name) for p in plans]
    values = np.stack([p.signal.grid(0, cfg.steps).values for p in plans])  # (S, T), NaN: silent
    for i in range(cfg.steps):
        ts = START_NS + i * cadence_ns
        col = values[:, i].tolist()
        engine.accept([Reading(k, ts, v) for k, v in zip(keys, col, strict=True) if v == v])
        engine.tick(ts)
    return marks, carries


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    t0, cpu0 = time.perf_counter(), time.process_time()
    plans = plan_streams(cfg)
    t1 = time.perf_counter()
    marks, carries = run_engine(cfg, plans)
    t2 = time.perf_counter()
    events = [e for p in plans for e in p.events]
    results = fm.match_events(events, marks, cfg.steps, cfg.slack)
    clean = {p.spec.stream_id for p in plans if p.clean}
    clean_hours = len(clean) * max(cfg.steps - cfg.warmup, 0) / 3600.0
    report = fm.summarise(results, fm.false_alerts(marks, clean, cfg.warmup), clean_hours)
    report.update({
        "streams": len(plans), "faulty_streams": len(plans) - len(clean), "clean_streams": len(clean),
        "steps": cfg.steps, "events": len(events), "alerts_fired": sum(m.state == "firing" for m in marks),
        "unmatched_alerts_on_faulty_streams": fm.unmatched(marks, events, 60, cfg.warmup),
        "limits_applied": carries, "model": cfg.model, "seed": cfg.seed, "slack_steps": cfg.slack,
        "seconds_engine": round(t2 - t1, 1), "seconds_total": round(time.perf_counter() - t0, 1),
        # CPU seconds too: on a shared machine the wall time says more about the neighbours.
        "cpu_seconds": round(time.process_time() - cpu0, 1), "cpus": os.cpu_count(), "targets": fm.TARGETS,
    })
    return report


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def print_table(r: dict[str, Any]) -> None:
    print(f"fault benchmark: {r['streams']} streams ({r['faulty_streams']} faulty, {r['clean_streams']} clean) x "
          f"{r['steps']} steps at 1 s through the live engine, model {r['model']}; {r['events']} events, "
          f"{r['alerts_fired']} alerts fired; engine {r['seconds_engine']} s, total {r['seconds_total']} s "
          f"({r['cpu_seconds']} s of CPU) on {r['cpus']} CPUs")
    if not r["limits_applied"]:
        print("NOTE: model bindings cannot carry rules here: no physical or operating limits were set")
    head = f"{'kind':<15}{'events':>7}{'recall':>8}{'target':>8}{'named':>7}{'pointwise':>10}" \
           f"{'delay p50':>10}{'p90':>6}{'late':>6}  recall by magnitude / first checks"
    print(head)
    for kind in ANOMALY_KINDS:
        row = r["kinds"].get(kind)
        if row is None:
            continue
        target = fm.RECALL_TARGET.get(kind)
        mags = " ".join(f"{m}:{v:.2f}" for m, v in row["by_magnitude"].items())
        checks = ",".join(f"{c}={n}" for c, n in row["first_checks"].items())
        print(f"{kind:<15}{row['events']:>7}{row['event_recall']:>8.2f}{_fmt(target, '>8.2f') if target else '-':>8}"
              f"{row['named_recall']:>7.2f}{row['pointwise_recall']:>10.2f}{_fmt(row['delay_median'], '.0f'):>10}"
              f"{_fmt(row['delay_p90'], '.0f'):>6}{row['after_end']:>6.2f}  {mags} / {checks or '-'}")
    print("named: an alert in the event names the expected check or kind; late: missed, but an alert came "
          f"within {fm.AFTER_END} steps after the event's end (the jump back to normal)")
    spike = r["kinds"].get("spike", {})
    print(f"spike delay median {_fmt(spike.get('delay_median'), '.0f')} steps (target 0)")
    deg = r["kinds"].get("degradation")
    if deg is not None:
        print(f"predicted_breach before the crossing: {deg['predicted_before_crossing']:.2f} of degradations "
              f"(target >= 0.90)")
    print(f"false alerts on clean streams: {r['false_alerts']} in {r['clean_stream_hours']:.1f} stream-hours = "
          f"{r['false_alerts_per_1k_clean_stream_hours']:.1f} per 1,000 stream-hours (target <= 1) "
          f"{r['false_alerts_by_check']}; alerts on faulty streams away from events: "
          f"{r['unmatched_alerts_on_faulty_streams']}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = BenchConfig()
    p.add_argument("--model", default=d.model, help="Model name (univariate, 1 s cadence).")
    p.add_argument("--version", help="Model version (default: the newest).")
    p.add_argument("--models-dir", type=Path, default=d.models_dir, help="Models directory.")
    p.add_argument("--streams-per-level", type=int, default=d.streams_per_level,
                   help="Faulty streams per fault kind and magnitude (3 magnitudes per kind).")
    p.add_argument("--clean", type=int, default=d.clean, help="Clean streams (for the false-alert rate).")
    p.add_argument("--steps", type=int, default=d.steps, help="Steps per stream (1 s each).")
    p.add_argument("--seed", type=int, default=d.seed, help="Simulator seed.")
    p.add_argument("--kinds", default=",".join(d.kinds), help=f"Comma-separated, from {', '.join(LEVELS)}.")
    p.add_argument("--out", type=Path, help="Write the results (JSON) here too.")


def run(args: argparse.Namespace) -> int:
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    bad = [k for k in kinds if k not in LEVELS]
    if bad or args.steps <= 0 or args.streams_per_level < 0 or args.clean < 0:
        print(f"sensorcast bench faults: bad --kinds {bad} (from {list(LEVELS)}) or a negative count", file=sys.stderr)
        return 2
    cfg = BenchConfig(model=args.model, version=args.version, models_dir=args.models_dir,
                      streams_per_level=args.streams_per_level, clean=args.clean, steps=args.steps,
                      seed=args.seed, kinds=kinds)
    report = run_bench(cfg)
    print_table(report)
    line = json.dumps(report, sort_keys=True)
    print(line)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n", encoding="utf-8")
    return 0
