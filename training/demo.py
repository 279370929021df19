"""Train the shipped demo model on the project's own simulator (tools/sim/signals.py).

    python -m training.demo [--models-dir models] [--version 1] [--steps 4000]
    python -m training.demo --calibrate-only   # recompute the shipped model's anomaly block

A univariate global GRU (F=1) with per-stream running scaling in its state, so one
small model serves every simulated quantity (temperature, humidity, power, ...) at the
demo's 1 s cadence, where a signal day passes in 288 steps. Trained on clean streams
(no injected anomalies) with realistic delivery (duplicates, jitter), seeded apart from
the demo's own seed so it never sees the exact values it will be shown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from service.records import NS_PER_S, Reading, StreamKey
from tools.sim import signals
from training.calibrate import Segment, calibrate, open_model, summary, write_block
from training.config import Config, DataConfig, ModelConfig, TrainConfig
from training.data import readings_to_dataset, split_rows

START_NS = 1_767_225_600 * NS_PER_S  # 2026-01-01T00:00Z
TRAIN_SEED = signals.DEMO_SEED + 1000


def demo_config(version: str, steps: int, epochs: int) -> Config:
    return Config(
        name="demo",
        version=version,
        data=DataConfig(
            source=f"tools.sim.signals demo_fleet, seed {TRAIN_SEED}, {steps} steps per stream",
            layout="univariate",
            serve=("dev[0-9]*/*",),  # the simulator's device names (tools/sim/specs.py fleet)
            cadence_s=signals.DEMO_CADENCE_S,
            time_features=(),  # signal days are time-compressed: wall-clock phases mean nothing
            split=(0.7, 0.15),
            # a signal day in steps: the seasonal-naive baseline's period
            season_steps=round(signals.DAY_S / signals.DEMO_COMPRESSION / signals.DEMO_CADENCE_S),
        ),
        model=ModelConfig(cell="gru", hidden=32, layers=1, dropout=0.1, horizon=60, scaling="ema",
                          ema_alpha=1 / 600, lags=0),
        # Batches of 16 strands: ~2x the optimiser steps per epoch of 32 (measured better).
        train=TrainConfig(epochs=epochs, batch=16, chunk=30, strand=240, lr=3e-3, patience=5, progress=False,
                          max_minutes=10),
    )


def demo_readings(steps: int, devices: int) -> dict[StreamKey, list[Reading]]:
    specs = signals.demo_fleet(devices=devices, quantities=tuple(signals.QUANTITIES))
    out: dict[StreamKey, list[Reading]] = {}
    for spec in specs:
        s = signals.generate(spec, START_NS, steps, TRAIN_SEED)
        key = StreamKey(spec.device, spec.quantity.name)
        out[key] = [Reading(key, int(t), float(v)) for t, v in zip(s.ts_ns, s.values, strict=True)]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--runs-dir", type=Path, default=Path("reports/train"))
    p.add_argument("--version", default="1")
    p.add_argument("--steps", type=int, default=4000, help="steps per simulated stream")
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--calibrate-only", action="store_true", help="no training: recompute the anomaly calibration "
                   "of <models-dir>/demo/<version> on the regenerated validation rows (the ONNX file stays)")
    a = p.parse_args(argv)
    cfg = demo_config(a.version, a.steps, a.epochs)
    if a.calibrate_only:
        return calibrate_only(cfg, a.models_dir / cfg.name / cfg.version, a.steps, a.devices)
    import torch

    from training.evaluate import report_markdown, write_report
    from training.export import export, save_checkpoint
    from training.trainer import assess, calibrate_threshold, train

    torch.set_num_threads(1)
    ds = readings_to_dataset(demo_readings(a.steps, a.devices), cfg.data, cfg.data.source)
    print(f"demo data: {len(ds.series)} streams x {len(ds.series[0].values)} steps, cadence {ds.cadence_s:g} s")
    t = train(cfg, ds)
    assessments = {"val": assess(t, "val"), "test": assess(t, "test")}
    threshold, calib = calibrate_threshold(t)
    ex = export(t, a.models_dir, assessments, version=cfg.version, default_threshold=threshold,
                extra_metrics={"calibration": calib} if calib else None,
                false_alerts_per_day=cfg.train.false_alerts_per_day)
    print(ex.calibration)
    run_dir = a.runs_dir / cfg.name / cfg.version
    save_checkpoint(t, run_dir / "checkpoint.pt")
    print(report_markdown(write_report(t, assessments, run_dir)))
    print(f"exported {ex.folder} (parity {ex.parity:.1e}, threshold {threshold:.6f}); report in {run_dir}")
    return 0


def calibrate_only(cfg: Config, folder: Path, steps: int, devices: int) -> int:
    """The shipped model's anomaly block from the regenerated validation rows (torch-free)."""
    ds = readings_to_dataset(demo_readings(steps, devices), cfg.data, cfg.data.source)
    segments = []
    for s in ds.series:
        sp = split_rows(len(s.values), cfg.data)
        segments.append(Segment(s.name, s.ts_ns, s.values, sp.train_end, sp.val_end))
    model = open_model(folder)
    result = calibrate(model, segments, cfg.train.false_alerts_per_day)
    write_block(folder, result.block)
    print(summary(result, model.manifest.cadence_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
