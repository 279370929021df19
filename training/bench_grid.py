"""Benchmark on simulated 8x8 IR grids: the grid model vs repeat-last vs a per-pixel GRU.

    python -m training.bench_grid [--steps 8000] [--horizon 30] [--minutes 3] [--seed 0]
                                  [--cells grid-rowlstm,gru,pixel-gru]

The data is ``tools/sim/grid.py``'s warming machine (60 s frames, an 8-hour run/rest
cycle, two moving hot spots, pixel r2c5 dead from step 2000 on). Each cell trains with
the same budget through ``training.trainer.train``; MSE in train-std units (per pixel,
pooled), on the test part (the last 20 %), streaming with state carried, next to
repeat-last. Two GRU baselines: ``gru``, the ordinary step GRU over the 64 pixels as one
multivariate model (a forecast head per pixel, one shared recurrence), and
``pixel-gru``, a GRU per pixel: 64 one-feature series of one global model, each pixel
with its own state (the univariate layout), blind to its neighbours.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from tools.sim.grid import GridSpec, frames
from training.config import Config, DataConfig, ModelConfig, TrainConfig
from training.data import Dataset, Series
from training.trainer import assess, train


def grid_dataset(steps: int, seed: int = 0, per_pixel: bool = False) -> Dataset:
    """One series of 64 features; ``per_pixel``: 64 one-feature series (one global model, a state per pixel)."""
    spec = GridSpec()
    ts, values = frames(spec, 1_700_000_000 * 1_000_000_000, steps, seed)
    v = values.astype(np.float32)
    if per_pixel:
        return Dataset(("value",), spec.cadence_s,
                       # The dead pixel is left out: it has nothing to score after training (and
                       # in the 64-feature models its missing targets are not scored either).
                       tuple(Series(f"{spec.device}/{n}", ts, v[:, [k]]) for k, n in enumerate(spec.names)
                             if not np.isnan(v[-1, k])),
                       "tools/sim/grid.py")
    return Dataset(tuple(spec.names), spec.cadence_s, (Series(spec.device, ts, v),), "tools/sim/grid.py")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.bench_grid", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8000, help="simulated frames (default 8000: ~5.6 days at 60 s)")
    p.add_argument("--horizon", type=int, default=30, help="forecast steps ahead (default 30: half an hour)")
    p.add_argument("--hidden", type=int, default=32, help="hidden units of every cell (default 32)")
    p.add_argument("--epochs", type=int, default=30, help="maximum epochs (default 30)")
    p.add_argument("--minutes", type=float, default=3.0, help="time limit per cell (default 3)")
    p.add_argument("--cells", default="grid-rowlstm,gru", help="comma-separated step cells (default grid-rowlstm,gru); "
                   "'pixel-gru': a GRU per pixel (64 one-feature series of one global model, each with its own state)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0, help="training seed (the simulated data stay the same; default 0)")
    args = p.parse_args(argv)
    rows = []
    for cell in [c for c in args.cells.split(",") if c]:
        per_pixel = cell == "pixel-gru"
        ds = grid_dataset(args.steps, per_pixel=per_pixel)
        cfg = Config(
            name=f"grid-{cell}",
            data=DataConfig(source="sim", split=(0.7, 0.1), time_features=(),
                            layout="univariate" if per_pixel else "series"),
            model=ModelConfig(cell="gru" if per_pixel else cell, hidden=args.hidden, horizon=args.horizon, dropout=0.0,
                              grid=(8, 8) if cell == "grid-rowlstm" else ()),
            train=TrainConfig(epochs=args.epochs, batch=4, chunk=24, strand=96, lr=3e-3, patience=5,
                              max_minutes=args.minutes, threads=args.threads, progress=False,
                              seed=args.seed),
        )
        t0 = time.monotonic()
        t = train(cfg, ds)
        secs = time.monotonic() - t0
        a = assess(t, "test")
        rows.append((cell, a.model.mse, a.repeat_last.mse, secs, t.history.best_epoch + 1,
                     sum(p.numel() for p in t.net.parameters())))
    load = os.getloadavg()[0]
    print(f"simulated 8x8 IR grid, {args.steps} frames, H={args.horizon}, hidden {args.hidden}, seed {args.seed}, test MSE "
          f"(train-std units; load average {load:.1f})\n")
    print("| model | test MSE | repeat-last | training s | best epoch | parameters |")
    print("|---|---|---|---|---|---|")
    for cell, mse, rl, secs, ep, n in rows:
        print(f"| {cell} | {mse:.3f} | {rl:.3f} | {secs:.0f} | {ep} | {n:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
